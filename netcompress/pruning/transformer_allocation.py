"""Global allocation of a MAC budget over attention heads and FFN neurons (``prune/transformer``
``allocation="global"``).

The uniform allocation removes the same share of heads (and of neurons) in every block, with the split
between heads and neurons set by hand. The global one follows Kwon et al. 2022 ("A fast post-training
pruning framework for transformers", the Fisher-based mask search): heads are ranked over *all* blocks by
their score, and so are neurons; for every possible number of kept heads ``k``, the MACs left by the target
go to the best neurons (as many as fit), and the ``k`` whose kept units have the largest total score wins.
So both the split and the per-block counts come from the scores. With ``importance="taylor"`` a score is
the Fisher information of the unit's gate, an estimate of the loss increase when it is removed, so scores
of heads and neurons add up; with ``magnitude``/``wanda`` the sum is a heuristic.

Costs are measured, not modelled: the MACs one head and one neuron of each block cost are read with
:func:`~netcompress.pruning.transformer_pruning.count_macs` on the example inputs (one trial model per
block and unit kind), so attention's own products and the token count are included. A final check removes
the weakest remaining neurons one by one should the measured MACs still be above the target.

Measured on the ViT of ``benchmarks/vit_pruning.py`` (taylor, 2x fewer MACs, validation split) it is
*worse* than the uniform split: it keeps nearly every head and almost no FFN neurons in the last three
blocks ([4, 3, 3, 3] heads, [70, 4, 1, 2] neurons), 44.5 % after the 3-epoch fine-tune against 45.4 % for
the uniform heads 0.25 / ffn 0.75 (both with ``reconstruct``); so ``uniform`` stays the default.

Example:
    >>> cfg = TransformerPruneConfig(importance="taylor", mac_target=2.0, allocation="global")
    >>> small, summary = transformer_prune(model, x, cfg, loader=train_loader)
    >>> [u["after"] for u in summary["heads"]], [u["after"] for u in summary["ffn"]]  # per block
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.selection import name_matches
from netcompress.pruning.transformer_blocks import Blocks
from netcompress.pruning.transformer_importance import UnitScores
from netcompress.pruning.transformer_surgery import TransformerPlan, apply_transformer_plan_

MacCounter = Callable[[nn.Module], int]


def _full_plan(blocks: Blocks, width: int) -> TransformerPlan:
    plan = TransformerPlan(hidden_width=width)
    for u in blocks.attention:
        plan.heads[u.name] = plan.kv_heads[u.name] = list(range(u.num_heads))
    for u in blocks.ffn:
        plan.neurons[u.name] = list(range(u.width))
    return plan


def _macs(model: nn.Module, blocks: Blocks, plan: TransformerPlan, count: MacCounter) -> int:
    return count(apply_transformer_plan_(copy.deepcopy(model), blocks, plan))


def unit_costs(
    model: nn.Module, blocks: Blocks, width: int, count: MacCounter
) -> tuple[int, dict[str, int], dict[str, int]]:
    """(MACs of the model, MACs of one head per attention block, MACs of one neuron per FFN block)."""
    base = count(model)
    heads, neurons = {}, {}
    for u in blocks.attention:
        plan = _full_plan(blocks, width)
        plan.heads[u.name] = plan.kv_heads[u.name] = list(range(u.num_heads - 1))
        heads[u.name] = base - _macs(model, blocks, plan, count)
    for u in blocks.ffn:
        plan = _full_plan(blocks, width)
        plan.neurons[u.name] = list(range(u.width - 1))
        neurons[u.name] = base - _macs(model, blocks, plan, count)
    return base, heads, neurons


def _ranked(units: dict[str, int], scores: dict[str, Any], floors: dict[str, int]) -> tuple[list, list]:
    """(forced, optional): the ``floors[name]`` best units of a block always kept; the rest by score, best first."""
    forced, optional = [], []
    for name, total in units.items():
        order = sorted(range(total), key=lambda i: (-float(scores[name][i]), i))
        forced += [(name, i) for i in order[: floors[name]]]
        optional += [(float(scores[name][i]), name, i) for i in order[floors[name] :]]
    optional.sort(key=lambda t: -t[0])
    return forced, optional


def global_plan(
    model: nn.Module,
    blocks: Blocks,
    scores: UnitScores,
    width: int,
    *,
    mac_target: float,
    head_floors: dict[str, int],
    neuron_floors: dict[str, int],
    count: MacCounter,
) -> TransformerPlan:
    """The plan keeping the highest total score within ``1 / mac_target`` of the model's MACs.

    ``head_floors``/``neuron_floors``: per block, how many of its best units are always kept (``min_heads``,
    one neuron; a block left whole: all of them).
    """
    if any(u.num_kv_heads != u.num_heads for u in blocks.attention):
        raise ConfigError("allocation='global' does not handle grouped-query attention: use 'uniform'")
    base, head_cost, neuron_cost = unit_costs(model, blocks, width, count)
    budget = base / mac_target
    forced_h, heads = _ranked({u.name: u.num_heads for u in blocks.attention}, scores.heads, head_floors)
    forced_n, neurons = _ranked({u.name: u.width for u in blocks.ffn}, scores.neurons, neuron_floors)
    removable = sum(head_cost[n] for _, n, _ in heads) + sum(neuron_cost[n] for _, n, _ in neurons)
    fixed = base - removable  # MACs of everything kept whatever the plan (embeddings, forced units, ...)
    prefix = [0.0]
    for s, _, _ in neurons:
        prefix.append(prefix[-1] + s)
    best: tuple[float, int, int] | None = None
    spent_h = score_h = 0.0
    for k in range(len(heads) + 1):
        if k:
            spent_h += head_cost[heads[k - 1][1]]
            score_h += heads[k - 1][0]
        left, n = budget - fixed - spent_h, 0
        if left < 0:
            break
        while n < len(neurons) and neuron_cost[neurons[n][1]] <= left:  # best neurons, as many as fit
            left -= neuron_cost[neurons[n][1]]
            n += 1
        if best is None or score_h + prefix[n] > best[0]:
            best = (score_h + prefix[n], k, n)
    if best is None:
        raise ConfigError(
            f"mac_target={mac_target} is out of reach with allocation='global': the units it must keep "
            f"(min_heads per block, one neuron per FFN, blocks left whole) already cost {fixed / base:.0%} of the MACs"
        )
    _, k, n = best
    while True:
        plan = _plan(blocks, width, forced_h + [(m, i) for _, m, i in heads[:k]], forced_n, neurons[:n])
        if n == 0 or base / _macs(model, blocks, plan, count) >= mac_target:
            return plan
        n -= 1  # the measured MACs are above the budget: drop the weakest kept neuron


def _plan(blocks: Blocks, width: int, heads: list, forced_n: list, neurons: list) -> TransformerPlan:
    plan = TransformerPlan(hidden_width=width)
    for u in blocks.attention:
        kept = sorted(i for name, i in heads if name == u.name)
        plan.heads[u.name] = plan.kv_heads[u.name] = kept
    kept_n = forced_n + [(name, i) for _, name, i in neurons]
    for u in blocks.ffn:
        plan.neurons[u.name] = sorted(i for name, i in kept_n if name == u.name)
    return plan


def plan_global(
    model: nn.Module, blocks: Blocks, scores: UnitScores, config: Any, width: int, count: MacCounter
) -> TransformerPlan:
    """:func:`global_plan` for a ``TransformerPruneConfig``: ``heads``/``ffn`` = 0 and ``ignore`` keep blocks whole."""
    skip = lambda name: any(name_matches(name, p) for p in config.ignore)  # noqa: E731
    heads = {
        u.name: u.num_heads if config.heads == 0 or skip(u.name) else min(config.min_heads, u.num_heads)
        for u in blocks.attention
    }
    neurons = {u.name: u.width if config.ffn == 0 or skip(u.name) else 1 for u in blocks.ffn}
    return global_plan(
        model, blocks, scores, width, mac_target=config.mac_target, head_floors=heads, neuron_floors=neurons,
        count=count,
    )  # fmt: skip


def smallest_reaching(
    trial: Callable[[float], Any], reached: Callable[[Any], bool], hi: float, best: Any, rounds: int
) -> tuple[float, Any]:
    """Bisect ``(0, hi]`` ``rounds`` times for the smallest factor whose ``trial`` is ``reached``.

    ``best`` is ``trial(hi)``, already known to be reached; returns ``(factor, its trial)``.
    """
    lo = 0.0
    for _ in range(rounds):
        mid = (lo + hi) / 2
        found = trial(mid)
        if reached(found):
            hi, best = mid, found
        else:
            lo = mid
    return hi, best
