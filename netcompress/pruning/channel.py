"""Structured channel pruning: rank coupled channel groups, then physically remove channels.

:func:`prune_channels` deep-copies the model, builds its :class:`ChannelGraph`, scores every
pruning unit with a criterion from :data:`IMPORTANCES`, picks the units to remove (per group =
``scope="local"``, or one ranking over all groups with per-group normalised scores =
``scope="global"``), and slices every coupled layer. The result has the same input and output
shapes and fewer parameters and MACs; the input model is never modified.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from netcompress.core.adapters import adapter_hint
from netcompress.core.config import check_choice, check_fraction, check_range
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.core.model_check import check_model_call
from netcompress.core.selection import name_matches as _matches
from netcompress.pruning.channel_report import architecture_lines as architecture_lines
from netcompress.pruning.channel_report import count_params as count_params
from netcompress.pruning.channel_report import count_total_macs as count_total_macs
from netcompress.pruning.channel_report import pruning_summary
from netcompress.pruning.graph import ChannelGraph, as_inputs, eval_mode
from netcompress.pruning.graph_tracing import build_channel_graph
from netcompress.pruning.importance import IMPORTANCES, layer_scores, unit_scores
from netcompress.pruning.recovery import RecoveryFields, recover
from netcompress.pruning.surgery import shrink_model_

SCOPES = ("local", "global")


@dataclasses.dataclass
class ChannelPlan:
    """Which units of which graph to remove; ``keep_indices()`` gives the per-layer surviving indices."""

    graph: ChannelGraph
    pruned_units: set[int]
    group_ratios: dict[int, float]

    def keep_indices(self) -> dict[str, dict[str, list[int] | None]]:
        return self.graph.keep_indices(self.pruned_units)


def _check_patterns(graph: ChannelGraph, patterns: Iterable[str], what: str) -> None:
    for pattern in patterns:
        if not any(_matches(name, pattern) for name in graph.layers):
            raise ConfigError(
                f"{what} pattern {pattern!r} matches no prunable layer; layers: {', '.join(graph.layers)}"
            )


# round_to="auto": groups of at least AUTO_ROUND_MIN_CHANNELS keep a multiple of AUTO_ROUND_MULTIPLE channels,
# smaller groups any count. Multiples of 8 ran 1.5-2.3x faster at batch 64 than the odd widths of the
# same MACs (oneDNN blocks channels by 8/16; benchmarks/RESULTS.md), but a 12-channel layer in blocks of 8
# could only keep 8 or 12, so small groups stay free
AUTO_ROUND_MULTIPLE, AUTO_ROUND_MIN_CHANNELS = 8, 16
RoundTo = int | str


def check_round_to(round_to: RoundTo) -> None:
    """``round_to`` is a positive int or ``"auto"``; anything else is a ConfigError naming it."""
    if round_to == "auto":
        return
    if isinstance(round_to, bool) or not isinstance(round_to, int):
        raise ConfigError(f"round_to must be a positive integer or 'auto', got {round_to!r}")
    check_range("round_to", round_to, 1)


@dataclasses.dataclass
class ChannelSelection(RecoveryFields):
    """The fields every channel-pruning method shares (``prune/channel``, ``prune/auto``), declared once, so
    :func:`prune_channels` and :func:`prune_to_target` have the same defaults: ``group_l2`` importance
    (filters + BN + the consumers' inputs; the best measured on the CIFAR-10 CPU protocol,
    benchmarks/RESULTS.md) and ``round_to=1`` (exactly the channels a ratio asks for). ``round_to="auto"``
    keeps multiples of 8 in groups of 16+ channels: the same accuracy and 1.5-2.3x faster on CPUs at
    batch 64, but it rounds a ratio's kept channels up (0.25 of 16 channels keeps all 16).

    After the prune a recipe step refits the weights to the unpruned model's layer outputs on
    ``reconstruct_batches`` training batches (0 = off; see ``reconstruct_weights_``), then re-estimates the
    BatchNorm statistics on ``recalibrate_bn_batches`` (0 = off); the Python verbs do neither.
    """

    importance: str = "group_l2"
    round_to: int | str = 1
    min_channels: int = 1
    ignore: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("importance", self.importance, IMPORTANCES.names())
        check_round_to(self.round_to)
        check_range("min_channels", self.min_channels, 1)
        if isinstance(self.ignore, str):
            raise ConfigError("ignore must be a list of layer names or 're:' patterns, not a string")
        self.ignore = list(self.ignore)


@dataclasses.dataclass
class ChannelPruneConfig(ChannelSelection):
    """``prune/channel`` and :func:`prune_channels`: remove ``ratio`` of the channels physically.

    ``ratios`` overrides ``ratio`` per layer name or ``re:`` pattern; ``max_batches`` training batches feed
    ``importance="taylor"``.
    """

    ratio: float = 0.5
    scope: str = "local"
    ratios: dict[str, float] | None = None
    max_batches: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction("ratio", self.ratio)
        check_choice("scope", self.scope, SCOPES)
        check_range("max_batches", self.max_batches, 1)
        for pattern, value in (self.ratios or {}).items():
            check_fraction(f"ratios[{pattern!r}]", value)


def group_multiple(round_to: RoundTo, num_units: int) -> int:
    """The multiple a group of ``num_units`` channels keeps under ``round_to`` (an int, or ``"auto"``).

    Example:
        >>> group_multiple("auto", 64), group_multiple("auto", 12), group_multiple(4, 12)
        (8, 1, 4)
    """
    if round_to == "auto":
        return AUTO_ROUND_MULTIPLE if num_units >= AUTO_ROUND_MIN_CHANNELS else 1
    return int(round_to)


def keep_count(num_units: int, ratio: float, *, round_to: RoundTo = 1, min_channels: int = 1) -> int:
    """Units kept when pruning ``ratio`` of ``num_units``: rounded up to ``round_to``, at least ``min_channels``.

    Example:
        >>> keep_count(64, 0.5), keep_count(10, 0.95), keep_count(10, 0.3, round_to=4)
        (32, 1, 8)
        >>> keep_count(64, 0.6, round_to="auto"), keep_count(12, 0.6, round_to="auto")
        (32, 5)
    """
    multiple = group_multiple(round_to, num_units)
    keep = num_units - math.floor(ratio * num_units + 1e-9)
    keep = math.ceil(keep / multiple) * multiple
    return min(num_units, max(keep, min_channels))


def select_local(scores: torch.Tensor, keep: int, unit_ids: list[int]) -> set[int]:
    """The ``len(scores) - keep`` lowest-scoring units (ties: lower index first)."""
    order = sorted(range(len(scores)), key=lambda k: (float(scores[k]), k))
    return {unit_ids[k] for k in order[: len(scores) - keep]}


def select_global(
    graph: ChannelGraph,
    scores: Mapping[int, torch.Tensor],
    count: int,
    *,
    min_channels: int = 1,
    round_to: RoundTo = 1,
    unit_costs: Mapping[int, float] | None = None,
) -> tuple[set[int], dict[int, int]]:
    """Remove up to ``count`` units over all groups in ``scores``, ranked by score / group mean.

    Per-group normalisation makes layers of different weight scales comparable. With
    ``unit_costs`` (what removing one unit of a group saves, e.g. MACs) the rank is
    ``(score / group mean) / (cost / mean cost)``: importance per unit of resource saved, so a
    budget is met by removing fewer, cheaper-to-lose channels. Returns the pruned unit ids and
    the number pruned per group.
    """
    mean_cost = sum(unit_costs.values()) / len(unit_costs) if unit_costs else 0.0
    ranked = []
    for gid, values in scores.items():
        mean = float(values.mean())
        norm = values / mean if mean > 0 else torch.ones_like(values)
        if unit_costs and mean_cost > 0:
            norm = norm / max(unit_costs[gid] / mean_cost, 1e-12)
        ranked += [(float(norm[k]), gid, k) for k in range(len(values))]
    ranked.sort()
    pruned: dict[int, list[int]] = {gid: [] for gid in scores}
    taken = 0
    for _, gid, k in ranked:
        if taken >= count:
            break
        if len(pruned[gid]) < len(scores[gid]) - min_channels:
            pruned[gid].append(k)
            taken += 1
    result: set[int] = set()
    for gid, ks in pruned.items():
        n = len(scores[gid])
        multiple = group_multiple(round_to, n)
        keep = min(n, math.ceil((n - len(ks)) / multiple) * multiple)
        ks = ks[: n - keep]  # appended in ascending score order: give back the best ones
        pruned[gid] = ks
        result |= {graph.groups[gid].unit_ids[k] for k in ks}
    return result, {gid: len(ks) for gid, ks in pruned.items()}


def plan_channel_pruning(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float = ChannelPruneConfig.ratio,
    importance: str = ChannelSelection.importance,
    scope: str = ChannelPruneConfig.scope,
    ignore: Iterable[str] = (),
    ratios: Mapping[str, float] | None = None,
    round_to: RoundTo = ChannelSelection.round_to,
    min_channels: int = ChannelSelection.min_channels,
    loader: Any = None,
    max_batches: int = ChannelPruneConfig.max_batches,
    seed: int = 0,
    graph: ChannelGraph | None = None,
) -> ChannelPlan:
    """Choose the units to remove without changing ``model``; see :func:`prune_channels` for arguments.

    Example:
        >>> plan = plan_channel_pruning(model, x, ratio=0.5)
        >>> plan.keep_indices()["features.0"]["out"][:4]
    """
    check_fraction("ratio", ratio)
    check_choice("scope", scope, SCOPES)
    check_choice("importance", importance, IMPORTANCES.names())
    check_round_to(round_to)
    check_range("min_channels", min_channels, 1)
    ignore, ratios = list(ignore), dict(ratios or {})
    for pattern, value in ratios.items():
        check_fraction(f"ratios[{pattern!r}]", value)
    try:
        graph = graph or build_channel_graph(model, example_inputs)
    except UnsupportedModelError as exc:  # a peft LoHa / LoKr conv computes its weight in forward: merge first
        hint = adapter_hint(model)
        if not hint:
            raise
        raise UnsupportedModelError(f"{exc}{hint}") from exc
    _check_patterns(graph, ignore, "ignore")
    _check_patterns(graph, ratios, "ratios")
    scores = unit_scores(
        graph, layer_scores(importance, model, graph, loader=loader, max_batches=max_batches, seed=seed)
    )
    pruned: set[int] = set()
    group_ratios: dict[int, float] = {}
    pooled: dict[int, torch.Tensor] = {}
    for group in graph.prunable_groups():
        if group.id not in scores or any(_matches(p, pat) for p in group.out_layers for pat in ignore):
            continue
        explicit = next(
            (r for pat, r in ratios.items() if any(_matches(p, pat) for p in group.out_layers)), None
        )
        if scope == "global" and explicit is None:
            pooled[group.id] = scores[group.id]
            continue
        group_ratio = ratio if explicit is None else explicit
        keep = keep_count(group.num_units, group_ratio, round_to=round_to, min_channels=min_channels)
        pruned |= select_local(scores[group.id], keep, group.unit_ids)
        group_ratios[group.id] = 1 - keep / group.num_units
    if pooled:
        count = math.floor(ratio * sum(len(v) for v in pooled.values()) + 1e-9)
        chosen, per_group = select_global(graph, pooled, count, min_channels=min_channels, round_to=round_to)
        pruned |= chosen
        group_ratios.update({gid: n / len(pooled[gid]) for gid, n in per_group.items()})
    return ChannelPlan(graph=graph, pruned_units=pruned, group_ratios=group_ratios)


def _outputs_shapes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    with eval_mode(model), torch.no_grad():
        out = model(*inputs)
    flat: list[torch.Tensor] = []
    torch.utils._pytree.tree_map(lambda t: flat.append(t) if isinstance(t, torch.Tensor) else None, out)
    return [tuple(t.shape) for t in flat]


def apply_channel_plan(model: nn.Module, plan: ChannelPlan, example_inputs: Any) -> nn.Module:
    """Return a pruned deep copy of ``model`` following ``plan``; checks output shapes are unchanged.

    Example:
        >>> small = apply_channel_plan(model, plan_channel_pruning(model, x), x)
    """
    inputs = as_inputs(example_inputs)
    before = _outputs_shapes(model, inputs)
    pruned = shrink_model_(copy.deepcopy(model), plan.graph, plan.keep_indices())
    try:
        after = _outputs_shapes(pruned, inputs)
    except Exception as exc:  # the forward may hold a constant the graph could not see
        raise UnsupportedModelError(f"the pruned model no longer runs: {type(exc).__name__}: {exc}") from exc
    if before != after:
        raise UnsupportedModelError(
            f"pruning changed the output shapes {before} -> {after}; refusing the result"
        )
    return pruned


_SETTINGS = ("ratio", "importance", "scope", "round_to", "min_channels", "ignore", "ratios")


def channel_prune(
    model: nn.Module, example_inputs: Any, config: ChannelPruneConfig, *, loader: Any = None, seed: int = 0
) -> tuple[nn.Module, dict[str, Any]]:
    """The algorithm under :func:`prune_channels` and ``prune/channel``: (pruned copy, JSON-able summary).

    Example:
        >>> small, summary = channel_prune(model, x, ChannelPruneConfig(ratio=0.5))
        >>> summary["params_before"], summary["params_after"], summary["architecture"][:2]
    """
    check_model_call(model, example_inputs, where="prune_channels")
    fields = {k: getattr(config, k) for k in _SETTINGS}
    plan = plan_channel_pruning(
        model, example_inputs, **fields, loader=loader, max_batches=config.max_batches, seed=seed
    )
    if (config.ratio > 0 or any((config.ratios or {}).values())) and not plan.graph.prunable_groups():
        why = "; ".join(f"{', '.join(g.producers) or '(no producer)'}: {g.reason}" for g in plan.graph.groups)
        raise UnsupportedModelError(
            f"channel pruning: no channel group of {type(model).__name__} can be pruned ({why})"
        )
    pruned = apply_channel_plan(model, plan, example_inputs)
    settings = {**fields, "ratios": dict(config.ratios or {})}
    return pruned, pruning_summary(model, pruned, plan, example_inputs, method="channel", **settings)


def prune_channels(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float = ChannelPruneConfig.ratio,
    importance: str = ChannelSelection.importance,
    scope: str = ChannelPruneConfig.scope,
    ignore: Iterable[str] = (),
    ratios: Mapping[str, float] | None = None,
    round_to: RoundTo = ChannelSelection.round_to,
    min_channels: int = ChannelSelection.min_channels,
    loader: Any = None,
    max_batches: int = ChannelPruneConfig.max_batches,
    seed: int = 0,
    config: ChannelPruneConfig | None = None,
) -> nn.Module:
    """Return a physically smaller copy of ``model`` with ``ratio`` of its channels removed.

    Every coupled layer is sliced (conv filters and input channels, biases, BatchNorm weights and
    running statistics, Linear input features after a flatten), so the copy has the same input and
    output shapes. ``model`` itself is left untouched. The keywords are :class:`ChannelPruneConfig`'s
    fields (defaults read from it); the summary comes from ``nc.apply(model, ChannelPruneConfig(...))``.

    Args:
        ratio: share of channels removed per group (local) or over all groups (global).
        importance: a name in ``IMPORTANCES`` (l1, l2, fpgm, taylor, bn_scale,
            group_l1, group_l2, random).
        scope: "local" ranks inside each group; "global" ranks all units by score / group mean.
        ignore: layer names or ``re:`` patterns whose output channels are never pruned.
        ratios: per-layer ratios ``{name or "re:pattern": ratio}`` overriding ``ratio``.
        round_to: kept channels per group rounded up to a multiple of this; ``"auto"``: multiples of 8
            in groups of 16 channels or more, any count in smaller ones (fast shapes on CPUs).
        min_channels: at least this many channels stay in every group.
        loader, max_batches: batches of (inputs, targets) for ``importance="taylor"``.
        config: a :class:`ChannelPruneConfig` (what a recipe step reads) instead of the keywords.

    Example:
        >>> small = prune_channels(model, torch.randn(2, 3, 32, 32), ratio=0.5, importance="l1")
        >>> small = prune_channels(model, x, config=ChannelPruneConfig(ratio=0.5))
    """
    if config is not None:
        return channel_prune(model, example_inputs, config, loader=loader, seed=seed)[0]
    config = ChannelPruneConfig.from_dict(
        {
            "ratio": ratio, "importance": importance, "scope": scope, "ignore": list(ignore),
            "ratios": None if ratios is None else dict(ratios), "round_to": round_to,
            "min_channels": min_channels, "max_batches": max_batches,
        },
        where="prune_channels",
    )  # fmt: skip
    return channel_prune(model, example_inputs, config, loader=loader, seed=seed)[0]


@register_method("prune", "channel", config=ChannelPruneConfig)
def channel(model: nn.Module, config: ChannelPruneConfig, data: MethodData) -> Result:
    """Remove channels physically (L1/L2/FPGM/Taylor/BN-scale/group/random importance)."""
    small, summary = channel_prune(
        model, data.example_inputs, config, loader=data.train_loader, seed=data.seed
    )
    return recover(small, model, summary, config, data)
