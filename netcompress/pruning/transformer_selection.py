"""Which heads, FFN neurons and stream channels a uniform transformer prune keeps (from unit scores).

Grouped-query attention: ``gqa="groups"`` removes whole key/value groups; where no whole group goes at
the share asked (one group left after an earlier prune), query heads go within each group instead, and
the summary's ``gqa_queries_fallback`` names those blocks. A prune that would remove nothing at all (every
block at ``min_heads``, say) is refused, not a silent no-op.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from netcompress.core.errors import ConfigError
from netcompress.core.selection import name_matches
from netcompress.pruning.transformer_blocks import AttentionUnit, Blocks
from netcompress.pruning.transformer_importance import UnitScores
from netcompress.pruning.transformer_surgery import TransformerPlan

if TYPE_CHECKING:
    from netcompress.pruning.transformer_pruning import TransformerPruneConfig


def keep_count(total: int, ratio: float, *, minimum: int = 1, round_to: int = 1) -> int:
    """Units kept when removing ``ratio`` of ``total``: rounded up to ``round_to``, at least ``minimum``.

    Example:
        >>> keep_count(4, 0.25), keep_count(4, 0.9), keep_count(37, 0.5, round_to=8)
        (3, 1, 24)
    """
    keep = total - math.floor(ratio * total + 1e-9)
    keep = math.ceil(keep / round_to) * round_to
    return min(total, max(keep, minimum))


def top_units(scores: torch.Tensor, keep: int) -> list[int]:
    """The ``keep`` best indices, sorted (ties: the higher index is removed first... kept lower index)."""
    order = sorted(range(len(scores)), key=lambda k: (-float(scores[k]), k))
    return sorted(order[:keep])


def select_heads(
    unit: AttentionUnit, scores: torch.Tensor, ratio: float, min_heads: int, gqa: str
) -> tuple[list[int], list[int]]:
    """Kept (query heads, key/value heads) of one attention unit."""
    g = unit.groups
    if g == 1:
        kept = top_units(scores, keep_count(unit.num_heads, ratio, minimum=min_heads))
        return kept, kept
    if gqa == "groups":
        group_scores = scores.view(unit.num_kv_heads, g).sum(1)
        groups = top_units(
            group_scores, keep_count(unit.num_kv_heads, ratio, minimum=math.ceil(min_heads / g))
        )
        if len(groups) < unit.num_kv_heads:
            return [kv * g + i for kv in groups for i in range(g)], groups
        # no whole key/value group goes at this share (one group left after an earlier prune, or too few
        # groups to round down): query heads go within each group instead (summary: gqa_queries_fallback)
    per_group = keep_count(g, ratio, minimum=math.ceil(min_heads / unit.num_kv_heads))
    kept = [
        kv * g + i
        for kv in range(unit.num_kv_heads)
        for i in top_units(scores[kv * g : (kv + 1) * g], per_group)
    ]
    return kept, list(range(unit.num_kv_heads))


def plan_transformer_pruning(
    blocks: Blocks, scores: UnitScores, config: TransformerPruneConfig, width: int
) -> TransformerPlan:
    """Choose what to keep from ``scores`` (see :class:`TransformerPruneConfig`)."""
    plan = TransformerPlan(hidden_width=width)
    skip = lambda name: any(name_matches(name, p) for p in config.ignore)  # noqa: E731
    if config.heads > 0:
        for unit in blocks.attention:
            if not skip(unit.name):
                q, kv = select_heads(
                    unit, scores.heads[unit.name], config.heads, config.min_heads, config.gqa
                )
                plan.heads[unit.name], plan.kv_heads[unit.name] = q, kv
    if config.ffn > 0:
        for unit in blocks.ffn:
            if not skip(unit.name):
                keep = keep_count(unit.width, config.ffn, round_to=config.round_to)
                plan.neurons[unit.name] = top_units(scores.neurons[unit.name], keep)
    if config.hidden > 0 and scores.hidden is not None:
        plan.hidden = top_units(scores.hidden, keep_count(width, config.hidden, round_to=config.round_to))
    return plan


def check_removes_something(blocks: Blocks, plan: TransformerPlan, config: TransformerPruneConfig) -> None:
    """Refuse a prune that would remove nothing at all (e.g. ``heads=0.5`` alone on a model already pruned
    down to ``min_heads``), naming why for each kind asked for, instead of returning the same model."""
    units = [u for u in blocks.attention if u.name in plan.heads]
    removes_heads = any(len(plan.heads[u.name]) < u.num_heads for u in units)
    removes_neurons = any(len(plan.neurons[u.name]) < u.width for u in blocks.ffn if u.name in plan.neurons)
    removes_hidden = plan.hidden is not None and len(plan.hidden) < plan.hidden_width
    if (
        removes_heads
        or removes_neurons
        or removes_hidden
        or not (config.heads or config.ffn or config.hidden)
    ):
        return
    why = []
    if config.heads > 0 and units:
        listed = ", ".join(f"{u.name!r} has {u.num_heads}" for u in units[:3]) + (
            ", ..." if len(units) > 3 else ""
        )
        why.append(f"heads={config.heads} removes no head ({listed} head(s), min_heads={config.min_heads})")
    if config.ffn > 0:
        why.append(f"ffn={config.ffn} removes no neuron")
    if config.hidden > 0:
        why.append(f"hidden={config.hidden} removes no stream channel")
    raise ConfigError(
        f"prune_transformer would remove nothing: {'; '.join(why)} (the model may be pruned already); "
        "raise the shares or lower min_heads"
    )


def queries_fallback(blocks: Blocks, plan: TransformerPlan, config: TransformerPruneConfig) -> list[str]:
    """Grouped-query blocks where gqa='groups' could remove no whole key/value group: query heads went."""
    return [
        u.name
        for u in blocks.attention
        if config.gqa == "groups"
        and u.groups > 1
        and u.name in plan.heads
        and len(plan.kv_heads[u.name]) == u.num_kv_heads
        and len(plan.heads[u.name]) < u.num_heads
    ]
