"""Choose per-group widths so the deployed model meets a measured latency or file-size target.

Under ``prune_to_target(target="latency" | "bytes")``:

1. every candidate group gets the widths ``config.widths`` (fractions kept, rounded as ``round_to``;
   under ``"auto"`` a width whose multiple of 8 repeats a wider one's takes a finer multiple:
   :func:`~netcompress.pruning.latency_widths.width_counts`), pruning its lowest-importance channels;
   with ``remove_branches`` a residual branch's inner group may also go to 0 channels (the branch removed,
   :mod:`~netcompress.pruning.branch_removal`); the
   :func:`~netcompress.pruning.latency_table.cost_table` of measured costs is read from the cache
   or measured once;
2. an accuracy proxy per group and width: ``strategy="sensitivity"`` measures the accuracy drop of
   pruning the group alone on ``max_batches`` validation batches; otherwise the importance lost (the
   pruned units' score over their group's mean score, as a share of all candidate units). On the narrow
   VGG at 2.5x lower ORT batch-64 latency the sensitivity proxy (1,000 validation images) kept 73.38 %
   after the 5-epoch fine-tune against 72.04 % for the importance proxy, which had cut one 64-channel
   layer to 16 (benchmarks/RESULTS.md, issue 18 session 8): pass a validation loader where one exists;
3. :func:`~netcompress.pruning.latency_widths.greedy_widths` repeatedly takes the move (one group to a
   narrower width) that loses the least proxy per unit of cost saved, until the table predicts the
   target; then :func:`~netcompress.pruning.latency_widths.give_back` widens groups again where the
   prediction still fits;
4. the chosen model is measured end to end against the unpruned one, interleaved. If it missed, the
   table's savings are rescaled by what the measurement found (measured / predicted saving, all groups
   alike) and the search keeps pruning; if it overshot by more than ``tolerance``, the same rescaling
   widens groups again; once a miss and an overshoot are both measured, the scale is bisected between
   them instead (:mod:`~netcompress.pruning.latency_widths`: rescaling by a noisy measurement jumped
   between the two); at most ``max_rounds`` rounds. Of the models that met the target the one that
   lost the least proxy is returned; a target that cannot be met returns the fastest model measured
   with ``met: false`` and the reason. ``confirm_rounds`` / ``fill_up`` / ``finalists`` make each check a
   median over interleaved rounds, widen a met model toward the budget, and re-time the best met ones
   together before one is returned (:mod:`~netcompress.pruning.latency_confirm`).

The summary lists every candidate measured (predicted and measured cost, proxy), the speed-up (or
size) of the result in each deployed form, and, with ``out_dir``, a plot of cost vs proxy.

Example:
    >>> small, summary = prune_to_target(model, x, target="latency", reduction=2.5, runtime="onnxruntime",
    ...                                  batch_size=64)
    >>> summary["met"], summary["achieved_reduction"], summary["speedup_by_form"]
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError, NetcompressError
from netcompress.evaluation.metrics import top1_accuracy
from netcompress.pruning.branch_removal import Branch, removable_branches, remove_branches_
from netcompress.pruning.channel import ChannelPlan, apply_channel_plan, select_local
from netcompress.pruning.channel_report import pruning_summary
from netcompress.pruning.graph import ChannelGraph
from netcompress.pruning.latency_confirm import fill_up_and_confirm, retime, state_macs
from netcompress.pruning.latency_priors import interaction_terms, layer_weights, smooth_savings
from netcompress.pruning.latency_table import (
    RUNTIMES,
    SHIP_FORMS,
    MeasureSpec,
    cost_table,
    measure,
)
from netcompress.pruning.latency_widths import (
    ScaleBracket,
    bisect_widths,
    give_back,
    greedy_widths,
    state_key,
    width_counts,
)
from netcompress.pruning.surgery import shrink_model_

__all__ = ["Variants", "give_back", "greedy_widths", "search_measured_target", "smooth_savings"]


def group_rates(graph: ChannelGraph, group_ids: Sequence[int], plan: ChannelPlan) -> list[dict[str, Any]]:
    """Per candidate group: its producers, channels before, kept, and the share removed."""
    keep = plan.keep_indices()
    rates = []
    for gid in group_ids:
        group = graph.groups[gid]
        kept = len(keep[group.producers[0]]["out"]) if group.producers else 0
        total = len(graph.layers[group.producers[0]].out_labels) if group.producers else 0
        rates.append(
            {"layers": group.producers, "channels": total, "kept": kept, "rate": 1 - kept / max(total, 1)}
        )
    return rates


@dataclasses.dataclass
class Variants:
    """Per candidate group (by label): the units pruned at each width index, and the channels kept.

    With ``branches`` (group id -> :class:`~netcompress.pruning.branch_removal.Branch`) every group gets one
    more width index: 0 channels (its residual branch removed) where the group is a removable branch, a
    repeat of its narrowest count (shares that measurement, never chosen) where it is not."""

    model: nn.Module
    graph: ChannelGraph
    labels: dict[str, int]  # label -> group id
    pruned: dict[str, list[set[int]]]
    kept: dict[str, list[int]]
    branches: dict[str, Branch] = dataclasses.field(default_factory=dict)  # label -> removable branch

    @classmethod
    def of(
        cls, model: nn.Module, graph: ChannelGraph, scores: Mapping[int, torch.Tensor], widths: Sequence[float],
        *, round_to: int | str, min_channels: int, branches: Mapping[int, Branch] | None = None,
    ) -> Variants:  # fmt: skip
        labels, pruned, kept, removable = {}, {}, {}, {}
        for gid, values in scores.items():
            group = graph.groups[gid]
            label = "+".join(group.producers) or f"group{gid}"
            labels[label] = gid
            counts = width_counts(group.num_units, widths, round_to=round_to, min_channels=min_channels)
            if branches is not None:
                counts.append(0 if gid in branches else counts[-1])
                if gid in branches:
                    removable[label] = branches[gid]
            kept[label] = counts
            # a removed branch prunes no channels: the whole branch goes (build)
            pruned[label] = [select_local(values, k, group.unit_ids) if k else set() for k in counts]
        return cls(model, graph, labels, pruned, kept, removable)

    def removed(self, state: Mapping[str, int]) -> list[Branch]:
        """The branches ``state`` removes (groups at 0 channels)."""
        return [
            b for label, b in self.branches.items() if label in state and self.kept[label][state[label]] == 0
        ]

    def units(self, state: Mapping[str, int]) -> set[int]:
        return set().union(*(self.pruned[label][index] for label, index in state.items()))

    def variant(self, label: str, index: int) -> nn.Module:
        """The model with group ``label`` alone at width index ``index``."""
        return self.build({label: index})

    def build(self, state: Mapping[str, int]) -> nn.Module:
        small = shrink_model_(
            copy.deepcopy(self.model), self.graph, self.graph.keep_indices(self.units(state))
        )
        removed = self.removed(state)
        return remove_branches_(small, removed) if removed else small


def importance_proxy(variants: Variants, scores: Mapping[int, torch.Tensor]) -> dict[str, list[float]]:
    """Share of all candidate units' importance lost at each width (scores over their group's mean)."""
    total = sum(len(v) for v in scores.values())
    proxy = {}
    for label, gid in variants.labels.items():
        values = scores[gid]
        mean = float(values.mean())
        norm = sorted((values / mean).tolist()) if mean > 0 else [1.0] * len(values)
        proxy[label] = [sum(norm[: len(values) - k]) / total for k in variants.kept[label]]
    return proxy


def sensitivity_proxy(
    variants: Variants, loader: Any, max_batches: int
) -> tuple[dict[str, list[float]], float]:
    """Accuracy drop (running max over narrower widths) of each group pruned alone; and the base accuracy."""
    base = top1_accuracy(variants.model, loader, max_batches=max_batches)
    if base is None:
        raise ConfigError("strategy='sensitivity': the loader yielded no batches")
    proxy = {}
    for label, counts in variants.kept.items():
        drops, worst = [], 0.0
        for index in range(len(counts)):
            if index and counts[index] != counts[index - 1]:  # a repeated count: the same model
                accuracy = top1_accuracy(variants.variant(label, index), loader, max_batches=max_batches)
                worst = max(worst, base - float(accuracy or 0.0))
            drops.append(worst)
        proxy[label] = drops
    return proxy, base


def _plot(out_dir: Any, summary: dict[str, Any], table_points: list[dict[str, Any]]) -> str:
    from netcompress.reporting.latency_plots import plot_cost_candidates

    path = Path(out_dir) / f"{summary['target']}_candidates.png"
    return str(plot_cost_candidates(summary, table_points, path))


def _forms(
    model: nn.Module, small: nn.Module, x: Any, spec: MeasureSpec, last: dict[str, float]
) -> dict[str, Any]:
    """The result against the unpruned model in every deployed form (the asked one reuses its measurement);
    a form the model cannot be put in reports its error instead."""
    out = {}
    kinds = RUNTIMES if spec.target == "latency" else SHIP_FORMS
    for kind in kinds:
        form = dataclasses.replace(
            spec, **({"runtime": kind} if spec.target == "latency" else {"ship_form": kind})
        )
        asked = kind == (spec.runtime if spec.target == "latency" else spec.ship_form)
        try:
            values = last if asked else measure({"unpruned": model, "candidate": small}, x, form)
        except (
            NetcompressError
        ) as exc:  # another form this model cannot take (an untraceable fold, tuple inputs)
            out[kind] = {"error": str(exc)}
            continue
        out[kind] = {f"unpruned_{spec.unit}": values["unpruned"], f"pruned_{spec.unit}": values["candidate"],
                     "reduction": values["unpruned"] / max(values["candidate"], 1e-12)}  # fmt: skip
    return out


def _exhausted_reason(
    config: Any, target: str, state: Mapping[str, int], kept: Mapping[str, Sequence[int]], rows: list
) -> str:
    """Why the search stopped short: every group at its narrowest width, or the table predicting no saving
    from narrowing the rest (a group whose narrower widths measured no faster than a wider one)."""
    narrowest = sum(kept[label][index] == min(kept[label]) for label, index in state.items())
    why = ("every candidate group is at its narrowest useful width" if narrowest == len(state) else
           f"the cost table predicts no further saving from narrowing any group ({narrowest} of {len(state)} "
           "at their narrowest width)")  # fmt: skip
    return (f"cannot reach {config.reduction}x lower {target}: {why} (widths down to {min(config.widths)}, "
            f"min_channels={config.min_channels}); the best measured is {max(r['reduction'] for r in rows):.3g}x")  # fmt: skip


def search_measured_target(
    model: nn.Module, example_inputs: Any, graph: ChannelGraph, scores: Mapping[int, torch.Tensor], config: Any,
    *, loader: Any = None, out_dir: Any = None, calib: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """The search under ``prune_to_target(target="latency" | "bytes")``; ``config`` is an ``AutoPruneConfig``.

    With ``config.quantize`` the search runs on :class:`~netcompress.pruning.latency_joint.JointSearch`'s
    int8 table (``calib``: calibration batches) and returns the float pruned model; its ``summary["precision"]``
    says which layers the int8 file keeps float (:func:`~netcompress.pruning.latency_joint.quantize_plan`)."""
    spec = MeasureSpec(target=config.target, runtime=config.runtime, batch_size=config.batch_size,
                       threads=config.threads, rounds=config.timing_rounds, ship_form=config.ship_form)  # fmt: skip
    branches = None
    if config.remove_branches:  # depth: width 0 (branch removed) offered to residual branches' inner groups
        if config.quantize:
            raise ConfigError("remove_branches is not supported with quantize (the int8 joint search)")
        branches = removable_branches(model, graph, example_inputs, scores)
    widths = [*config.widths, 0.0] if branches is not None else list(config.widths)
    variants = Variants.of(model, graph, scores, config.widths, round_to=config.round_to,
                           min_channels=config.min_channels, branches=branches)  # fmt: skip
    base_accuracy = None
    if config.strategy == "sensitivity":
        if loader is None:
            raise ConfigError(
                "strategy='sensitivity' needs loader= (validation batches) for the accuracy proxy"
            )
        proxy, base_accuracy = sensitivity_proxy(variants, loader, config.max_batches)
    else:
        proxy = importance_proxy(variants, scores)
    joint, plain = None, variants
    if config.quantize:  # widths and int8/float per layer against the int8 ONNX Runtime graph
        from netcompress.pruning.latency_joint import JointSearch

        joint = JointSearch.setup(
            model, example_inputs, variants, proxy, spec, config, loader=loader, calib=calib
        )
        table, variants, proxy, priors = joint.table, joint.variants, joint.proxy, joint.priors
    else:
        table = cost_table(model, example_inputs, variants.variant, spec, kept=variants.kept,
                           widths=widths, cache_dir=config.cache_dir)  # fmt: skip
        weights = layer_weights(model, example_inputs, spec.target)
        priors = smooth_savings(variants, table, weights)
        table.pairs = interaction_terms(variants, table, weights)
    slack = 1.0 + config.tolerance if spec.target == "latency" else 1.0
    state = dict.fromkeys(variants.kept, 0)
    budget = table.base / config.reduction
    trajectory: list[dict[str, Any]] = [
        {"group": None, "width": 1.0, "predicted": table.base, "proxy_lost": 0.0}
    ]
    rows: list[dict[str, Any]] = []
    results: list[tuple[dict[str, float], dict[str, int]]] = []
    reason, bracket, bisected = None, ScaleBracket(), None
    measured: dict[tuple[tuple[str, int], ...], dict[str, Any]] = {}
    confirming = config.confirm_rounds > 1 or config.fill_up or config.finalists
    macs = state_macs(plain, example_inputs) if confirming else None  # the float model's MACs (widths only)

    def check(state: dict[str, int], phase: str, bisected: bool = False) -> dict[str, Any]:
        """Measure ``state`` end to end (``confirm_rounds`` rounds); its row is recorded and returned."""
        small = variants.build(state)
        timing = retime(model, {"candidate": small}, example_inputs, spec, config.confirm_rounds)["candidate"]
        values = {k: timing[k] for k in ("unpruned", "candidate")}
        row = {"round": len(rows) + 1, "phase": phase, "predicted": table.predict(state),
               "measured": values["candidate"], "unpruned": values["unpruned"], "reduction": timing["ratio"],
               "scale": table.scale, "proxy_lost": sum(proxy[g][i] for g, i in state.items()),
               "bisected": bisected, "widths": {g: table.widths[i] for g, i in state.items() if i}}  # fmt: skip
        if confirming:
            row.update(macs=macs(state), **{k: timing[k] for k in ("timings", "ratios", "spread")})
        if base_accuracy is not None:
            row["accuracy"] = top1_accuracy(small, loader, max_batches=config.max_batches)
        row["met"] = row["reduction"] * slack >= config.reduction
        # faster (smaller) than asked by more than the tolerance: accuracy given away for nothing
        row["overshoot"] = row["reduction"] > config.reduction * (1.0 + config.tolerance)
        rows.append(row)
        results.append((values, dict(state)))
        measured[state_key(state)] = row
        return row

    for _ in range(config.max_rounds):
        if bisected is None:  # the table rescaled by the last measurement: go on from the last widths
            trajectory += greedy_widths(state, table, proxy, budget)
            exhausted = table.predict(state) > budget
            give_back(state, table, proxy, budget)
        else:  # widths chosen afresh at the middle of the bracket a miss and an overshoot left
            state, exhausted = bisected, False
        row = check(state, "search", bisected is not None)
        achieved = row["reduction"]
        bracket.record(table.scale, met=row["met"], overshoot=row["overshoot"])
        if row["met"] and not row["overshoot"]:
            break
        if exhausted and not row["met"]:
            reason = _exhausted_reason(config, spec.target, state, table.kept, rows)
            break
        if bracket.closed:  # a miss and an overshoot measured: bisect the scale between them
            bisected = bisect_widths(bracket, list(state), table, proxy, budget, measured)
            if bisected is None:  # no new widths between them (or noise emptied it): keep the best met
                break
            continue
        # the table's savings were worth measured / predicted: rescale them (all groups alike) and go on,
        # pruning more after a miss, widening again after an overshoot
        predicted_saving = (table.base - table.predict(state)) / table.scale
        measured_saving = table.base * (1.0 - 1.0 / achieved)
        scale = min(max(measured_saving / predicted_saving, 0.02), 50.0) if predicted_saving > 0 else 0.5
        table.scale = scale if row["met"] else min(scale, 0.999 * table.scale)
        if row["met"]:
            trial = dict(state)
            give_back(trial, table, proxy, budget)
            if trial == state:
                break
    else:
        reason = (f"{config.reduction}x lower {spec.target} not confirmed within max_rounds={config.max_rounds}; "
                  f"the best measured is {max(r['reduction'] for r in rows):.3g}x")  # fmt: skip
    # of the models that met the target, the one that lost the least proxy; else the fastest measured
    met = [k for k, r in enumerate(rows) if r["met"]]
    pick = (min(met, key=lambda k: (rows[k]["proxy_lost"], -k)) if met
            else max(range(len(rows)), key=lambda k: rows[k]["reduction"]))  # fmt: skip
    confirmation = None
    if met and (config.fill_up or config.finalists):  # widen toward the budget; re-time the best met together
        pick, confirmation, why = fill_up_and_confirm(
            rows, results, pick, config, table=table, proxy=proxy, macs=macs, check=check, build=variants.build,
            reference=model, example_inputs=example_inputs, spec=spec, slack=slack,
        )  # fmt: skip
        reason = why or reason
    values, state = results[pick]
    achieved, met_final = rows[pick]["reduction"], bool(rows[pick]["met"])
    if confirmation is not None:  # the re-timing of the finalists decides
        values = {k: confirmation["timing"][k] for k in ("unpruned", "candidate")}
        achieved, met_final = confirmation["timing"]["ratio"], confirmation["met"]
    plan = ChannelPlan(graph=graph, pruned_units=variants.units(state), group_ratios={})
    small = apply_channel_plan(model, plan, example_inputs)
    removed = plain.removed(state)
    if removed:
        small = remove_branches_(small, removed)
    summary = pruning_summary(model, small, plan, example_inputs, method=f"auto_{spec.target}",
                              importance=config.importance)  # fmt: skip
    rates = group_rates(graph, list(variants.labels.values()), plan)
    for rate, label in zip(rates, plain.labels):
        if label in plain.branches and plain.kept[label][state[label]] == 0:
            rate.update(kept=0, rate=1.0, removed_branch=plain.branches[label].owner)
    table_points = [
        {"group": label, "width": table.widths[i], "kept": table.kept[label][i], "cost": table.costs[label][i],
         "proxy_lost": proxy[label][i]}
        for label in table.costs for i in range(1, len(table.widths))
    ]  # fmt: skip
    summary.update(
        target=spec.target, unit=spec.unit, requested_reduction=config.reduction,
        achieved_reduction=achieved, target_before=values["unpruned"],
        target_after=values["candidate"], met=met_final, reason=None if met_final else reason,
        strategy=config.strategy, proxy="sensitivity" if base_accuracy is not None else "importance",
        baseline_accuracy=base_accuracy, bisection=bracket.to_dict(), rates=rates,
        removable_branches={label: b.owner for label, b in plain.branches.items()},
        removed_branches=[b.owner for b in removed],
        candidates=rows, chosen_round=rows[pick]["round"], trajectory=trajectory, confirmation=confirmation,
        cost_table={"path": table.path, "cached": table.cached, "measured_s": table.measured_s,
                    "base": table.base, "widths": table.widths, "entries": table_points, "pairs": table.pairs,
                    "prior_entries": priors},
        measure={"runtime": spec.runtime, "batch_size": spec.batch_size, "threads": spec.threads,
                 "ship_form": spec.ship_form, "rounds": spec.rounds},
    )  # fmt: skip
    if joint is not None:
        joint.finish(summary, state, values, small)
    else:
        summary["by_form"] = _forms(model, small, example_inputs, spec, values)
    if spec.target == "latency":
        summary["speedup_by_form"] = {
            k: v["reduction"] for k, v in summary["by_form"].items() if "reduction" in v
        }
    if out_dir is not None:
        summary["plot"] = _plot(out_dir, summary, table_points)
    return small, summary
