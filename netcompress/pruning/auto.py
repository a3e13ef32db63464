"""Automatic per-layer pruning rates under a MAC, parameter, latency or file-size budget.

:func:`prune_to_target` chooses them for a requested reduction factor (``before / after >= reduction``);
measured targets (``"latency"``, ``"bytes"``) are searched by :mod:`netcompress.pruning.latency_search`:

- ``method="global"``: one ranking of all channel units by importance normalised per group
  (score / group mean); a binary search finds the fewest units to remove to reach the target.
- ``method="global_cost"``: the same ranking divided by what one unit of the group costs in the
  target (MACs or parameters), i.e. importance per MAC saved. Measured on a narrow VGG it is a
  poor allocation: early full-resolution layers are so expensive that it cuts them to one
  channel (37 % after fine-tuning vs 72-73 % for the others), so it is not the default.
- ``method="uniform"``: the same share of every group (Torch-Pruning's default); a binary
  search on the ratio (steps of 1e-3) finds the smallest one that reaches the target, then the
  channels that last step removed are given back, most important first, while the budget holds.
- ``method="sensitivity"``: prune each group alone at several rates and measure the accuracy
  drop on a few batches of ``loader``; then raise groups one grid step at a time, cheapest
  (running-max) accuracy drop first, taking the fewest steps that reach the target.

After any strategy, :func:`~netcompress.pruning.auto_strategies.fill_up` gives pruned channels back in
whole rounding blocks (8 under ``round_to="auto"``), most important first, while the budget holds: rounding
never overshoots by more than one block (the uniform ratio alone went to 9.10x for 8x on the narrow VGG;
with the fill-up 8.07x). All report the chosen per-layer rates and the measured reduction. The strategies live in the
:data:`STRATEGIES` registry. The defaults, ``method="uniform"`` with ``importance="group_l2"``, are
the best measured on the CIFAR-10 CPU protocol (benchmarks/RESULTS.md, narrow VGG at 3.5x fewer MACs,
5 fine-tune epochs, three seeds): 73.62 % against 72.83 % for ``global`` + ``l1`` with channels x8.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.core.model_check import check_model_call
from netcompress.pruning.auto_strategies import (
    DEFAULT_RATE_GRID,
    METHODS,
    STRATEGIES,
    TARGETS,
    Search,
    fill_up,
    measure_pruned,
    smallest_passing,
    top_up,
)
from netcompress.pruning.channel import (
    ChannelPlan,
    ChannelSelection,
    RoundTo,
    _matches,
    apply_channel_plan,
)
from netcompress.pruning.channel_report import pruning_summary
from netcompress.pruning.graph_tracing import build_channel_graph
from netcompress.pruning.importance import layer_scores, unit_scores
from netcompress.pruning.latency_joint import quantize_plan
from netcompress.pruning.latency_search import group_rates, search_measured_target
from netcompress.pruning.latency_table import DEFAULT_WIDTHS, TARGET_KINDS, MeasuredTargetFields
from netcompress.pruning.recovery import recover


@dataclasses.dataclass
class AutoPruneConfig(ChannelSelection, MeasuredTargetFields):
    """``prune/auto`` and :func:`prune_to_target`: per-layer rates chosen to reach ``reduction``x fewer
    ``target`` (``"macs"``, ``"params"``, or measured: ``"latency"``, ``"bytes"``, see
    :class:`MeasuredTargetFields`); ``strategy`` is the verb's ``method`` (a recipe step's ``method`` key
    names the step itself). ``max_batches`` batches feed ``strategy="sensitivity"`` (validation batches)
    and ``importance="taylor"``."""

    target: str = "macs"
    reduction: float = 2.0
    strategy: str = "uniform"
    max_batches: int = 2
    rate_grid: list[float] = dataclasses.field(default_factory=lambda: list(DEFAULT_RATE_GRID))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_measured()
        check_choice("target", self.target, [*TARGETS, *TARGET_KINDS])
        check_choice("strategy", self.strategy, METHODS)
        check_range("reduction", self.reduction, 1.0)
        check_range("max_batches", self.max_batches, 1)
        for rate in self.rate_grid:
            check_range("rate_grid entry", rate, 0.0, 1.0)


def prune_to_target(
    model: nn.Module,
    example_inputs: Any,
    *,
    target: str = AutoPruneConfig.target,
    reduction: float = AutoPruneConfig.reduction,
    importance: str = ChannelSelection.importance,
    method: str = AutoPruneConfig.strategy,
    loader: Any = None,
    max_batches: int = AutoPruneConfig.max_batches,
    min_channels: int = ChannelSelection.min_channels,
    round_to: RoundTo = ChannelSelection.round_to,
    ignore: Iterable[str] = (),
    rate_grid: Sequence[float] = DEFAULT_RATE_GRID,
    runtime: str = AutoPruneConfig.runtime,
    batch_size: int = AutoPruneConfig.batch_size,
    threads: int = AutoPruneConfig.threads,
    widths: Sequence[float] = DEFAULT_WIDTHS,
    max_rounds: int = AutoPruneConfig.max_rounds,
    tolerance: float = AutoPruneConfig.tolerance,
    timing_rounds: int = AutoPruneConfig.timing_rounds,
    ship_form: str = AutoPruneConfig.ship_form,
    cache_dir: str | None = None,
    quantize: str | None = None,
    remove_branches: bool = AutoPruneConfig.remove_branches,
    confirm_rounds: int = AutoPruneConfig.confirm_rounds,
    fill_up: int = AutoPruneConfig.fill_up,
    fill_up_slack: float = AutoPruneConfig.fill_up_slack,
    finalists: int = AutoPruneConfig.finalists,
    calib_loader: Any = None,
    out_dir: Any = None,
    seed: int = 0,
    config: AutoPruneConfig | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Return (pruned copy, summary) with ``target`` reduced by ``reduction``x.

    ``target="macs"`` / ``"params"``: counted. ``"latency"``: measured in the deployed form
    (``runtime="onnxruntime"`` session or BN-folded ``"torch"``, at ``batch_size`` on ``threads``);
    ``"bytes"``: the size of the shipped file (``ship_form``). Measured targets plan on a cached per-group
    cost table at ``widths`` and confirm end to end (:mod:`netcompress.pruning.latency_search`); one
    that cannot be met returns the best model with ``met: False`` and a ``reason``; with ``out_dir`` a
    plot of the candidates is written there.
    ``quantize="joint"`` (latency on onnxruntime) decides per layer between pruning more and int8 vs float
    against the measured int8 ORT graph, ``"int8"`` quantizes every layer (:mod:`netcompress.pruning.latency_joint`):
    the result is the fake-quantized model (export it with ``export_onnx(..., int8=True)``), calibrated on
    ``calib_loader`` (else ``loader``), its plan and the reasons layers stayed float in ``summary["precision"]``.
    ``remove_branches=True`` (latency / bytes) also offers removing whole residual branches with an identity
    shortcut (depth pruning: the block keeps its shortcut; :mod:`netcompress.pruning.branch_removal`).
    ``confirm_rounds`` (median of that many interleaved rounds per end-to-end check), ``fill_up`` (measured
    widening steps once met) and ``finalists`` (best met candidates re-timed together) steady a latency search
    on a loaded machine (:mod:`netcompress.pruning.latency_confirm`).
    ``loader`` gives (inputs, targets) batches: needed for ``method="sensitivity"`` (accuracy on
    ``max_batches`` batches) and ``importance="taylor"``. The summary lists the chosen rate of
    every group (``rates``), the requested and achieved reduction, and the usual pruning summary.
    A macs/params target the model cannot reach raises ConfigError naming the largest reachable reduction.
    The keywords are :class:`AutoPruneConfig`'s fields (``method`` is its ``strategy``), defaults read from it.

    ``round_to="auto"`` keeps multiples of 8 channels in groups of 16 or more and any count in smaller
    ones (the default, shared with :func:`prune_channels`, is ``round_to=1``: any count). Rounding to 8
    kept accuracy within fine-tune seed noise at 3.5x fewer MACs on the narrow VGG and ResNet-20 and
    raised the batch-64 speed-up from 1.66x / 1.52x (``round_to=1``) to 2.54x / 2.08x in PyTorch and
    from 1.39x / 1.11x to 2.57x / 1.71x in ONNX Runtime (``benchmarks/RESULTS.md``); a plain
    ``round_to=8`` cannot reach a target on small models (layers of 8-16 channels), which ``"auto"``
    leaves free. The latency / bytes search refines ``"auto"`` where a width's multiple of 8 repeats a wider
    one's (a 16-channel group: 16 / 12 / 8 / 4, not 16 / 16 / 8 / 8; ``latency_widths.width_counts``).

    Example:
        >>> small, summary = prune_to_target(model, x, target="macs", reduction=2.0)
        >>> summary["achieved_reduction"] >= 2.0
        True
        >>> small, summary = prune_to_target(model, x, target="latency", reduction=2.5, batch_size=64)
    """
    if config is None:  # the keywords, validated as a recipe step's config would be
        config = AutoPruneConfig.from_dict(
            {
                "target": target, "reduction": reduction, "importance": importance, "strategy": method,
                "max_batches": max_batches, "min_channels": min_channels, "round_to": round_to,
                "ignore": list(ignore), "rate_grid": list(rate_grid), "runtime": runtime, "batch_size": batch_size,
                "threads": threads, "widths": list(widths), "max_rounds": max_rounds, "ship_form": ship_form,
                "tolerance": tolerance, "timing_rounds": timing_rounds, "quantize": quantize,
                "remove_branches": remove_branches, "confirm_rounds": confirm_rounds, "fill_up": fill_up,
                "fill_up_slack": fill_up_slack, "finalists": finalists,
                "cache_dir": None if cache_dir is None else str(cache_dir),
            },
            where="prune_to_target",
        )  # fmt: skip
    calib = calib_loader if calib_loader is not None else loader
    small, summary = _search(
        model, example_inputs, config, loader=loader, calib=calib, out_dir=out_dir, seed=seed
    )
    if config.quantize:
        small = quantize_plan(small, summary, calib, example_inputs)
    return small, summary


def _search(
    model: nn.Module, example_inputs: Any, config: AutoPruneConfig, *, loader: Any, calib: Any, out_dir: Any,
    seed: int,
) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """:func:`prune_to_target` on a validated config; a ``quantize`` search returns the float pruned model."""
    check_model_call(model, example_inputs, where="prune_to_target")
    target, reduction, method, rate_grid = config.target, config.reduction, config.strategy, config.rate_grid
    importance, min_channels, round_to = config.importance, config.min_channels, config.round_to
    if method == "sensitivity" and loader is None:
        raise ConfigError("method='sensitivity' needs loader= to measure the accuracy drop of each layer")
    graph = build_channel_graph(model, example_inputs)
    for pattern in config.ignore:
        if not any(_matches(name, pattern) for name in graph.layers):
            raise ConfigError(f"ignore pattern {pattern!r} matches no prunable layer")
    scores = unit_scores(graph, layer_scores(importance, model, graph, loader=loader, max_batches=config.max_batches, seed=seed))  # fmt: skip
    candidates = {
        g.id: scores[g.id]
        for g in graph.prunable_groups()
        if g.id in scores and not any(_matches(n, p) for n in g.out_layers for p in config.ignore)
    }
    if not candidates:
        raise ConfigError(f"{type(model).__name__} has no prunable channel group for prune_to_target")
    if target in TARGET_KINDS:
        return search_measured_target(model, example_inputs, graph, candidates, config, loader=loader,
                                      out_dir=out_dir, calib=calib)  # fmt: skip
    before = TARGETS[target](model, example_inputs)
    budget = before / reduction
    search = Search(model, graph, candidates, target, example_inputs, min_channels, round_to)
    values, choose, extra = STRATEGIES[method](
        search, loader=loader, max_batches=config.max_batches, rate_grid=rate_grid
    )
    index = smallest_passing(
        values, lambda c: measure_pruned(model, graph, choose(c), target, example_inputs) <= budget
    )
    if index is None:
        best = measure_pruned(model, graph, choose(values[-1]), target, example_inputs)
        raise ConfigError(
            f"cannot reach a {reduction}x {target} reduction: at most {before / max(best, 1):.2f}x "
            f"with min_channels={min_channels}"
            + (f" and rates up to {max(rate_grid)}" if method == "sensitivity" else "")
        )
    pruned = choose(values[index])
    if method == "uniform" and index > 0:
        pruned = top_up(search, pruned, choose(values[index - 1]), budget)
    before_fill = len(pruned)
    pruned = fill_up(search, pruned, budget)  # whole rounding blocks back while the budget holds
    plan = ChannelPlan(graph=graph, pruned_units=pruned, group_ratios={})
    small = apply_channel_plan(model, plan, example_inputs)
    after = TARGETS[target](small, example_inputs)
    summary = pruning_summary(model, small, plan, example_inputs, method=f"auto_{method}", importance=importance)  # fmt: skip
    summary.update(
        target=target, requested_reduction=reduction, achieved_reduction=before / max(after, 1),
        target_before=before, target_after=after, rates=group_rates(graph, list(candidates), plan),
        strategy=method,
        # what the search moved: units removed (global), the shared ratio (uniform), steps (sensitivity)
        search_value=values[index], filled_units=before_fill - len(pruned),
        **extra,
    )  # fmt: skip
    return small, summary


@register_method("prune", "auto", config=AutoPruneConfig)
def auto(model: nn.Module, config: AutoPruneConfig, data: MethodData) -> Result:
    """Choose per-layer rates automatically to reach a MAC, parameter, latency or file-size reduction."""
    loader = data.val_loader if config.strategy == "sensitivity" or config.quantize else data.train_loader
    calib = data.calibration if config.quantize else None
    small, summary = _search(
        model, data.example_inputs, config, loader=loader, calib=calib, out_dir=data.out_dir, seed=data.seed
    )
    result = recover(small, model, summary, config, data)
    if config.quantize:  # the recovered float model, int8 where the search chose it
        result.model = quantize_plan(result.model, result.summary, calib, data.example_inputs)
    return result
