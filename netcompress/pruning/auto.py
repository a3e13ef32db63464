"""Automatic per-layer pruning rates under a MAC or parameter budget.

Hand-set rates were a stated limit of the reference experiments. :func:`prune_to_target`
chooses them for a requested reduction factor (``macs_before / macs_after >= reduction``):

- ``method="global"``: one ranking of all channel units by importance normalised per group
  (score / group mean); a binary search finds the fewest units to remove to reach the target.
- ``method="sensitivity"``: prune each group alone at several rates and measure the accuracy
  drop on a few batches of ``loader``; then raise groups one grid step at a time, cheapest
  (running-max) accuracy drop first, taking the fewest steps that reach the target.

Both report the chosen per-layer rates and the measured reduction.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.pruning.channel import (
    ChannelPlan,
    _matches,
    apply_channel_plan,
    count_params,
    count_total_macs,
    keep_count,
    pruning_summary,
    select_global,
    select_local,
)
from netcompress.pruning.graph import ChannelGraph, build_channel_graph, eval_mode
from netcompress.pruning.importance import layer_scores, unit_scores
from netcompress.pruning.surgery import shrink_model_


def _params_target(model: nn.Module, example_inputs: Any) -> int:
    return count_params(model)


TARGETS: dict[str, Callable[[nn.Module, Any], int]] = {"macs": count_total_macs, "params": _params_target}
METHODS = ("global", "sensitivity")
DEFAULT_RATE_GRID = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)


def _measure(model: nn.Module, graph: ChannelGraph, pruned: set[int], target: str, inputs: Any) -> int:
    small = shrink_model_(copy.deepcopy(model), graph, graph.keep_indices(pruned))
    return TARGETS[target](small, inputs)


def _accuracy(model: nn.Module, loader: Any, max_batches: int) -> float:
    correct = total = 0
    with eval_mode(model), torch.no_grad():
        for i, (inputs, targets) in enumerate(loader):
            if i >= max_batches:
                break
            correct += int((model(inputs).argmax(1) == targets).sum())
            total += int(targets.numel())
    if total == 0:
        raise ConfigError("method='sensitivity': the loader yielded no batches")
    return correct / total


def _smallest_passing(candidates: Sequence[Any], passes: Callable[[Any], bool]) -> int | None:
    """Index of the first candidate that passes, assuming passing is monotone along the list."""
    lo, hi = 0, len(candidates) - 1
    if hi < 0 or not passes(candidates[hi]):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if passes(candidates[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def prune_to_target(
    model: nn.Module,
    example_inputs: Any,
    *,
    target: str = "macs",
    reduction: float = 3.5,
    importance: str = "l1",
    method: str = "global",
    loader: Any = None,
    max_batches: int = 2,
    min_channels: int = 1,
    round_to: int = 1,
    ignore: Iterable[str] = (),
    rate_grid: Sequence[float] = DEFAULT_RATE_GRID,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Return (pruned copy, summary) with ``target`` ("macs" or "params") reduced by ``reduction``x.

    ``loader`` gives (inputs, targets) batches: needed for ``method="sensitivity"`` (accuracy on
    ``max_batches`` batches) and ``importance="taylor"``. The summary lists the chosen rate of
    every group (``rates``), the requested and achieved reduction, and the usual pruning summary.
    A target the model cannot reach raises ConfigError naming the largest reachable reduction.

    Example:
        >>> small, summary = prune_to_target(model, x, target="macs", reduction=2.0)
        >>> summary["achieved_reduction"] >= 2.0
        True
    """
    check_choice("target", target, list(TARGETS))
    check_choice("method", method, METHODS)
    check_range("reduction", reduction, 1.0)
    if method == "sensitivity" and loader is None:
        raise ConfigError("method='sensitivity' needs loader= to measure the accuracy drop of each layer")
    ignore = list(ignore)
    graph = build_channel_graph(model, example_inputs)
    for pattern in ignore:
        if not any(_matches(name, pattern) for name in graph.layers):
            raise ConfigError(f"ignore pattern {pattern!r} matches no prunable layer")
    scores = unit_scores(
        graph, layer_scores(importance, model, graph, loader=loader, max_batches=max_batches, seed=seed)
    )
    candidates = {
        g.id: scores[g.id]
        for g in graph.prunable_groups()
        if g.id in scores and not any(_matches(n, p) for n in g.out_layers for p in ignore)
    }
    if not candidates:
        raise ConfigError(f"{type(model).__name__} has no prunable channel group for prune_to_target")
    before = TARGETS[target](model, example_inputs)
    budget = before / reduction
    extra: dict[str, Any] = {}
    if method == "global":
        counts = list(range(sum(len(v) for v in candidates.values()) + 1))

        def choose(count: int) -> set[int]:
            return select_global(graph, candidates, count, min_channels=min_channels, round_to=round_to)[0]

    else:
        base = _accuracy(model, loader, max_batches)
        drops: dict[int, list[float]] = {}
        for gid in candidates:
            group = graph.groups[gid]
            drops[gid] = []
            for rate in rate_grid:
                keep = keep_count(group.num_units, rate, round_to=round_to, min_channels=min_channels)
                pruned = select_local(candidates[gid], keep, group.unit_ids)
                small = shrink_model_(copy.deepcopy(model), graph, graph.keep_indices(pruned))
                drops[gid].append(base - _accuracy(small, loader, max_batches))
        extra["baseline_accuracy"] = base
        extra["sensitivity"] = [
            {"layers": graph.groups[g].producers, "rates": list(rate_grid), "accuracy_drop": d}
            for g, d in drops.items()
        ]
        # one step = raise one group to its next grid rate; steps ordered by the (running-max) accuracy
        # drop they cost, so the least sensitive layers are pruned first and harder (monotone in k)
        steps = []
        for gid, ds in drops.items():
            worst = -1.0
            for rate, drop in zip(rate_grid, ds):
                worst = max(worst, drop)
                steps.append((worst, rate, gid))
        steps.sort()
        counts = list(range(len(steps) + 1))

        def choose(k: int) -> set[int]:
            rates: dict[int, float] = {}
            for _, rate, gid in steps[:k]:
                rates[gid] = max(rates.get(gid, 0.0), rate)
            pruned: set[int] = set()
            for gid, rate in rates.items():
                group = graph.groups[gid]
                keep = keep_count(group.num_units, rate, round_to=round_to, min_channels=min_channels)
                pruned |= select_local(candidates[gid], keep, group.unit_ids)
            return pruned

    index = _smallest_passing(
        counts, lambda c: _measure(model, graph, choose(c), target, example_inputs) <= budget
    )
    if index is None:
        best = _measure(model, graph, choose(counts[-1]), target, example_inputs)
        raise ConfigError(
            f"cannot reach a {reduction}x {target} reduction: at most {before / max(best, 1):.2f}x "
            f"with min_channels={min_channels}"
            + (f" and rates up to {max(rate_grid)}" if method == "sensitivity" else "")
        )
    plan = ChannelPlan(graph=graph, pruned_units=choose(counts[index]), group_ratios={})
    small = apply_channel_plan(model, plan, example_inputs)
    after = TARGETS[target](small, example_inputs)
    summary = pruning_summary(
        model, small, plan, example_inputs, method=f"auto_{method}", importance=importance
    )
    keep = plan.keep_indices()
    rates = []
    for gid in candidates:
        group = graph.groups[gid]
        kept = len(keep[group.producers[0]]["out"]) if group.producers else 0
        total = len(graph.layers[group.producers[0]].out_labels) if group.producers else 0
        rates.append(
            {"layers": group.producers, "channels": total, "kept": kept, "rate": 1 - kept / max(total, 1)}
        )
    summary.update(
        target=target,
        requested_reduction=reduction,
        achieved_reduction=before / max(after, 1),
        target_before=before,
        target_after=after,
        rates=rates,
        **extra,
    )
    return small, summary
