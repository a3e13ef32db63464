"""The counted strategies of :func:`~netcompress.pruning.auto.prune_to_target` (``target="macs" | "params"``).

Each strategy (registry :data:`STRATEGIES`) returns the search values in increasing pruning order, a
function from a value to the pruned unit ids, and summary extras; ``prune_to_target`` binary-searches the
values for the first whose pruned model fits the budget (:func:`smallest_passing`). See
:mod:`netcompress.pruning.auto` for what each one does and which is the default.

Example:
    >>> values, choose, extra = STRATEGIES["uniform"](Search(model, graph, scores, "macs", x, 1, 1))
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.evaluation.metrics import top1_accuracy
from netcompress.pruning.channel import RoundTo, group_multiple, keep_count, select_global, select_local
from netcompress.pruning.channel_report import count_params, count_total_macs
from netcompress.pruning.graph import ChannelGraph
from netcompress.pruning.surgery import shrink_model_


def _params_target(model: nn.Module, example_inputs: Any) -> int:
    return count_params(model)


TARGETS: dict[str, Callable[[nn.Module, Any], int]] = {"macs": count_total_macs, "params": _params_target}
DEFAULT_RATE_GRID = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)


def measure_pruned(model: nn.Module, graph: ChannelGraph, pruned: set[int], target: str, inputs: Any) -> int:
    small = shrink_model_(copy.deepcopy(model), graph, graph.keep_indices(pruned))
    return TARGETS[target](small, inputs)


def _accuracy(model: nn.Module, loader: Any, max_batches: int) -> float:
    accuracy = top1_accuracy(model, loader, max_batches=max_batches)
    if accuracy is None:
        raise ConfigError("method='sensitivity': the loader yielded no batches")
    return accuracy


def smallest_passing(candidates: Sequence[Any], passes: Callable[[Any], bool]) -> int | None:
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


@dataclasses.dataclass
class Search:
    """What every strategy needs: the model, its graph, the candidate groups' scores and the budget rules."""

    model: nn.Module
    graph: ChannelGraph
    candidates: dict[int, torch.Tensor]
    target: str
    inputs: Any
    min_channels: int
    round_to: RoundTo

    def at_rate(self, gid: int, rate: float) -> set[int]:
        """The lowest-scoring units of group ``gid`` that pruning ``rate`` of it removes."""
        group = self.graph.groups[gid]
        keep = keep_count(group.num_units, rate, round_to=self.round_to, min_channels=self.min_channels)
        return select_local(self.candidates[gid], keep, group.unit_ids)


# a strategy returns (search values in increasing pruning order, value -> pruned unit ids, summary extras);
# prune_to_target binary-searches the values for the first whose pruned model fits the budget
Strategy = Callable[..., tuple[Sequence[Any], Callable[[Any], set[int]], dict[str, Any]]]
STRATEGIES: dict[str, Strategy] = {}


def _strategy(name: str) -> Callable[[Strategy], Strategy]:
    def register(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return register


@_strategy("global")
def _global(search: Search, **_: Any) -> tuple[Sequence[int], Callable[[int], set[int]], dict[str, Any]]:
    """One ranking of all units by score / group mean; the search moves the number removed."""
    counts = list(range(sum(len(v) for v in search.candidates.values()) + 1))

    def choose(count: int) -> set[int]:
        return select_global(
            search.graph, search.candidates, count, min_channels=search.min_channels, round_to=search.round_to
        )[0]

    return counts, choose, {}


def unit_costs(search: Search) -> dict[int, float]:
    """What removing one unit of each candidate group saves of the target (MACs or parameters).

    Measured on the unpruned model, one shrink per group: a first-order cost that ignores how
    pruning a neighbour makes a unit cheaper, which is enough to rank layers by price.
    """
    before = TARGETS[search.target](search.model, search.inputs)
    costs = {}
    for gid in search.candidates:
        one = {search.graph.groups[gid].unit_ids[0]}
        costs[gid] = float(
            before - measure_pruned(search.model, search.graph, one, search.target, search.inputs)
        )
    return costs


@_strategy("global_cost")
def _global_cost(search: Search, **_: Any) -> tuple[Sequence[int], Callable[[int], set[int]], dict[str, Any]]:
    """Global ranking by importance per unit of target saved: (score / group mean) / (cost / mean cost)."""
    costs = unit_costs(search)
    counts = list(range(sum(len(v) for v in search.candidates.values()) + 1))

    def choose(count: int) -> set[int]:
        return select_global(
            search.graph, search.candidates, count, min_channels=search.min_channels,
            round_to=search.round_to, unit_costs=costs,
        )[0]  # fmt: skip

    layers = {gid: search.graph.groups[gid].producers for gid in costs}
    return counts, choose, {"unit_costs": [{"layers": layers[g], "cost": c} for g, c in costs.items()]}


@_strategy("uniform")
def _uniform(search: Search, **_: Any) -> tuple[Sequence[float], Callable[[float], set[int]], dict[str, Any]]:
    """The same ratio for every group (Torch-Pruning's default); the search moves the ratio (steps of 1e-3)."""
    ratios = [k / 1000 for k in range(1000)]

    def choose(ratio: float) -> set[int]:
        return set().union(*(search.at_rate(gid, ratio) for gid in search.candidates))

    return ratios, choose, {}


def top_up(search: Search, pruned: set[int], lighter: set[int], budget: float) -> set[int]:
    """Give back what the last ratio step took where the budget allows.

    One step of the shared ratio can drop a channel from many groups at once (all 16-channel stages
    of a ResNet), overshooting the budget (3.96x for a 3.5x request). The units that step removed,
    group by group (whole ``round_to`` blocks), are restored most important first (score / group
    mean) while the model still fits the budget.
    """
    blocks = []
    for gid, scores in search.candidates.items():
        ids = search.graph.groups[gid].unit_ids
        block = [k for k, uid in enumerate(ids) if uid in pruned and uid not in lighter]
        if block:
            mean = float(scores.mean()) or 1.0
            value = float(scores[block].mean()) / mean
            blocks.append((-value, gid, {ids[k] for k in block}))
    for _, _, units in sorted(blocks, key=lambda b: (b[0], b[1])):
        trial = pruned - units
        if measure_pruned(search.model, search.graph, trial, search.target, search.inputs) <= budget:
            pruned = trial
    return pruned


def fill_up(search: Search, pruned: set[int], budget: float) -> set[int]:
    """Give pruned channels back, one rounding block at a time, while the model still fits ``budget``.

    Rounding kept channels up to multiples of 8 (``round_to="auto"``) moves a ratio in coarse steps: at
    8x fewer MACs on the narrow VGG the shared ratio landed on 9.10x. Each pass offers, per group, its
    best-scoring pruned units in one block of the group's multiple (fewer where fewer are pruned) and
    restores the most valuable block (mean score / group mean) that fits; it stops when none fits, so
    the result is as close to the budget as whole blocks allow and kept counts stay multiples.

    Example:
        >>> pruned = fill_up(search, pruned, budget=before / 8.0)
    """
    while True:
        blocks = []
        for gid, scores in search.candidates.items():
            group = search.graph.groups[gid]
            gone = [k for k, uid in enumerate(group.unit_ids) if uid in pruned]
            if not gone:
                continue
            size = group_multiple(search.round_to, group.num_units)
            block = sorted(gone, key=lambda k: (-float(scores[k]), k))[:size]
            mean = float(scores.mean()) or 1.0
            value = float(scores[block].mean()) / mean
            blocks.append((-value, gid, {group.unit_ids[k] for k in block}))
        for _, _, units in sorted(blocks, key=lambda b: (b[0], b[1])):
            trial = pruned - units
            if measure_pruned(search.model, search.graph, trial, search.target, search.inputs) <= budget:
                pruned = trial
                break
        else:
            return pruned


@_strategy("sensitivity")
def _sensitivity(
    search: Search, *, loader: Any, max_batches: int, rate_grid: Sequence[float], **_: Any
) -> tuple[Sequence[int], Callable[[int], set[int]], dict[str, Any]]:
    """Per-group accuracy drops at each grid rate; least sensitive groups are raised first."""
    model, graph = search.model, search.graph
    base = _accuracy(model, loader, max_batches)
    drops: dict[int, list[float]] = {}
    for gid in search.candidates:
        drops[gid] = []
        for rate in rate_grid:
            small = shrink_model_(copy.deepcopy(model), graph, graph.keep_indices(search.at_rate(gid, rate)))
            drops[gid].append(base - _accuracy(small, loader, max_batches))
    extra = {
        "baseline_accuracy": base,
        "sensitivity": [
            {"layers": graph.groups[g].producers, "rates": list(rate_grid), "accuracy_drop": d}
            for g, d in drops.items()
        ],
    }
    # one step = raise one group to its next grid rate; steps ordered by the (running-max) accuracy
    # drop they cost, so the least sensitive layers are pruned first and harder (monotone in k)
    steps = []
    for gid, ds in drops.items():
        worst = -1.0
        for rate, drop in zip(rate_grid, ds):
            worst = max(worst, drop)
            steps.append((worst, rate, gid))
    steps.sort()

    def choose(k: int) -> set[int]:
        rates: dict[int, float] = {}
        for _, rate, gid in steps[:k]:
            rates[gid] = max(rates.get(gid, 0.0), rate)
        return set().union(*(search.at_rate(gid, rate) for gid, rate in rates.items()))

    return list(range(len(steps) + 1)), choose, extra


METHODS = tuple(STRATEGIES)
