"""Issue 18, session 9: 8x-fewer-MAC rows that differ in kind from session 8's, and what bounds them.

Registered next to ``pruning_latency.py``'s rows (``--latency-mode --methods ...``); every pruning row gets
the shared ``--finetune-epochs`` budget in total (epochs spent between stages count), BN recalibration on
10 training batches, any channel count (Torch-Pruning's granularity, session 8's best) and the fill-up:

- ``nc_macs_high_stages``: pruned in stages inside the same budget: 2x fewer MACs, one epoch at the constant
  fine-tune lr, 4x, one epoch, 8x, then the remaining epochs (cosine); group L2 re-scored on the current
  model at each stage, one uniform ratio per stage;
- ``nc_macs_high_gradual``: the same in 8 smaller steps (geometric MAC reductions to 8x), one at the start of
  each quarter of the first two epochs;
- ``nc_macs_high_search``: the per-group widths searched under the MAC budget against a cheap proxy read on
  the VALIDATION split (``cp.heldout_loader``, never the test set): each candidate is pruned (group L2), its
  BatchNorm recalibrated on 10 training batches, and its top-1 on 1,000 validation images read (the
  "adaptive BN" proxy of EagleEye, Li et al. 2020). ``SEARCH_RANDOM`` random allocations (per-group keep
  fractions ``c * u`` with ``u`` log-uniform in [1/2, 2], ``c`` bisected to the budget; candidate 0 is the
  uniform one), then ``SEARCH_MUTATIONS`` mutations of the best four; the best by proxy is fine-tuned;
- ``tp_magnitude_macs_high_long``: Torch-Pruning's 8x row fine-tuned ``LONG_EPOCHS`` epochs (3x the budget):
  how much a longer budget alone gives;
- ``nc_latency_sens_long``: ``nc_latency_sens``'s chosen widths (its pruned model kept in the work folder when
  that row ran there, else the search again) fine-tuned ``LONG_EPOCHS`` epochs: whether the 5-epoch budget or
  the widths stop "within 1 point of unpruned" at the latency target (issue 18 session 10);
- ``scratch_macs_high``: Torch-Pruning's 8x widths re-initialised and trained like the baseline (SGD, lr of
  the protocol model, cosine) for the baseline's epochs plus the fine-tune budget: what those widths reach
  without any pruning (checkpointed every epoch, so a killed run resumes).

Example:
    python benchmarks/pruning.py --latency-mode --models narrow_vgg --methods nc_macs_high_search \
        tp_magnitude_macs_high
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import cifar_protocol as cp
import torch
from pruning_methods import (
    METHODS,
    RECALIBRATE_BN_BATCHES,
    Context,
    Pruned,
    finetune_config,
    macs_of,
)
from pruning_recovery import row_pruned_model, validation_loader
from torch import nn

from netcompress.evaluation import count_macs
from netcompress.evaluation.metrics import top1_accuracy
from netcompress.pruning import prune_to_target, recalibrate_bn
from netcompress.pruning.channel import ChannelPlan, apply_channel_plan, select_local
from netcompress.pruning.graph_tracing import build_channel_graph
from netcompress.pruning.importance import layer_scores, unit_scores
from netcompress.training import fit

STAGE_REDUCTIONS = (2.0, 4.0)  # MAC reductions (against the unpruned model) before the final one
SEARCH_RANDOM, SEARCH_MUTATIONS, SEARCH_SEED = 48, 16, 0
LONG_EPOCHS = 15
BOUND_ROWS = ("tp_magnitude_macs_high_long", "scratch_macs_high")  # what a longer budget / no pruning reach
LATENCY_BOUND_ROWS = ("nc_latency_sens_long",)  # the same for the latency target's widths
STAGES_ROWS = (
    "nc_macs_high_stages",
    "nc_macs_high_gradual",
    "nc_macs_high_search",
    *BOUND_ROWS,
    *LATENCY_BOUND_ROWS,
)
GRADUAL_STEPS, GRADUAL_EPOCHS = 8, 2


@METHODS.register("nc_macs_high_stages")
def _prune_to(model: nn.Module, ctx: Context, macs: float) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` pruned (group L2, uniform, any channel count) down to ``macs`` MACs, BN recalibrated."""
    now = macs_of(model, ctx.example)
    pruned, summary = prune_to_target(
        model, ctx.example, target="macs", reduction=now / macs, importance="group_l2", method="uniform",
        round_to=1,
    )  # fmt: skip
    recalibrate_bn(pruned, ctx.train_loader, num_batches=RECALIBRATE_BN_BATCHES)
    return pruned, summary


def _nc_macs_high_stages(base: nn.Module, ctx: Context) -> Pruned:
    high = ctx.config.high_mac_reduction
    budget_base = macs_of(base, ctx.example)
    stages = [r for r in STAGE_REDUCTIONS if r < high][: max(ctx.config.finetune_epochs - 1, 0)]
    between = dataclasses.replace(finetune_config(ctx, epochs=1), schedule="constant")
    model, log = copy.deepcopy(base), []
    for index, reduction in enumerate([*stages, high]):
        if index:
            fit(model, ctx.train_loader, config=between)
        model, summary = _prune_to(model, ctx, budget_base / reduction)
        log.append({"reduction": budget_base / macs_of(model, ctx.example), "arch": summary["architecture"]})
    steps = " -> ".join(f"{r:g}x" for r in [*stages, high])
    label = (f"netcompress group L2, uniform, any channel count, in stages {steps} (1 epoch between, "
             "inside the budget) + BN recal.")  # fmt: skip
    info = {"label": label, "stages": log, "arch": log[-1]["arch"]}
    return Pruned(model, epochs_used=len(stages), info=info)


class PartialEpoch:
    """The next ``count`` batches of ``loader`` (carrying on where the last slice stopped, a new pass of the
    loader when one ends): ``fit`` on it trains a fraction of an epoch."""

    def __init__(self, loader: Any, count: int) -> None:
        self.loader, self.count, self._it = loader, count, None

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Any:
        for _ in range(self.count):
            try:
                yield next(self._it)  # type: ignore[arg-type]
            except (StopIteration, TypeError):
                self._it = iter(self.loader)
                yield next(self._it)


@METHODS.register("nc_macs_high_gradual")
def _nc_macs_high_gradual(base: nn.Module, ctx: Context) -> Pruned:
    """``GRADUAL_STEPS`` prunings at geometric MAC reductions ``high ** (k / steps)``, one at the start of each
    equal slice of ``GRADUAL_EPOCHS`` epochs (constant lr); then the rest of the budget (cosine)."""
    high, steps = ctx.config.high_mac_reduction, GRADUAL_STEPS
    epochs = min(GRADUAL_EPOCHS, max(ctx.config.finetune_epochs - 1, 0))
    base_macs = macs_of(base, ctx.example)
    slice_ = PartialEpoch(ctx.train_loader, max(1, len(ctx.train_loader) * epochs // steps))
    between = dataclasses.replace(finetune_config(ctx, epochs=1), schedule="constant")
    model, log = copy.deepcopy(base), []
    for k in range(1, steps + 1):
        reduction = high ** (k / steps)
        model, summary = _prune_to(model, ctx, base_macs / reduction)
        log.append({"reduction": base_macs / macs_of(model, ctx.example)})
        if epochs:
            fit(model, slice_, config=between)
    label = (f"netcompress group L2, uniform, any channel count, pruned gradually ({steps} steps to {high:g}x "
             f"in the first {epochs} of the budget's epochs) + BN recal.")  # fmt: skip
    return Pruned(
        model, epochs_used=epochs, info={"label": label, "steps": log, "arch": summary["architecture"]}
    )


class AllocationSearch:
    """Per-group channel counts under a MAC budget, scored by BN-recalibrated validation accuracy.

    A candidate is a shape ``u`` (one positive number per group): keep ``c * u_g`` of group ``g``'s channels
    with the largest ``c`` that fits the budget, then single channels given back while it still fits, the
    group furthest below its share first. MACs are counted from the plan (every conv / linear's unpruned MACs
    times its kept input and output shares: exact for ungrouped layers), not by building each model.
    """

    def __init__(self, base: nn.Module, ctx: Context, *, val: Any = None) -> None:
        self.base, self.ctx = base, ctx
        self.graph = build_channel_graph(base, ctx.example)
        self.groups = [g for g in self.graph.prunable_groups() if g.producers]
        self.scores = unit_scores(self.graph, layer_scores("group_l2", base, self.graph))
        self.layer_macs = count_macs(base, ctx.example)[1]
        self.base_macs = macs_of(base, ctx.example)
        self.budget = self.base_macs / ctx.config.high_mac_reduction
        self.val = validation_loader(ctx) if val is None else val

    def plan(self, keeps: list[int]) -> ChannelPlan:
        pruned: set[int] = set()
        for group, keep in zip(self.groups, keeps, strict=True):
            pruned |= select_local(self.scores[group.id], keep, group.unit_ids)
        return ChannelPlan(graph=self.graph, pruned_units=pruned, group_ratios={})

    def macs(self, keeps: list[int]) -> float:
        keep = self.plan(keeps).keep_indices()
        total = 0.0
        for name, macs in self.layer_macs.items():
            share, layer = 1.0, self.graph.layers.get(name)
            for dim, labels in (("in", layer and layer.in_labels), ("out", layer and layer.out_labels)):
                if labels:
                    share *= len(keep[name][dim]) / len(labels)  # type: ignore[arg-type]
            total += macs * share
        return total

    def build(self, keeps: list[int]) -> nn.Module:
        return apply_channel_plan(self.base, self.plan(keeps), self.ctx.example)

    def fit_budget(self, shape: list[float]) -> list[int]:
        """The channel counts of ``shape`` at the budget (bisected scale, then single channels given back)."""
        sizes = [g.num_units for g in self.groups]

        def at(c: float) -> list[int]:
            return [min(n, max(1, math.floor(c * u * n + 1e-9))) for u, n in zip(shape, sizes, strict=True)]

        lo, hi = 0.0, 1.0 / min(shape)
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.macs(at(mid)) <= self.budget else (lo, mid)
        keeps = at(lo)
        while True:  # give single channels back, the group furthest below its share of the shape first
            order = sorted(range(len(keeps)), key=lambda g: keeps[g] / (shape[g] * sizes[g]))
            grow = next((g for g in order if keeps[g] < sizes[g]
                         and self.macs([k + (i == g) for i, k in enumerate(keeps)]) <= self.budget), None)  # fmt: skip
            if grow is None:
                return keeps
            keeps[grow] += 1

    def proxy(self, model: nn.Module) -> float:
        recalibrate_bn(model, self.ctx.train_loader, num_batches=RECALIBRATE_BN_BATCHES)
        return float(top1_accuracy(model, self.val) or 0.0)

    def run(self) -> tuple[nn.Module, dict[str, Any]]:
        gen = torch.Generator().manual_seed(SEARCH_SEED)
        shapes = [[1.0] * len(self.groups)]
        shapes += [[math.exp((torch.rand(1, generator=gen).item() * 2 - 1) * math.log(2)) for _ in self.groups]
                   for _ in range(SEARCH_RANDOM - 1)]  # fmt: skip
        tried: list[dict[str, Any]] = []
        best: tuple[float, nn.Module] | None = None

        def score(shape: list[float], kind: str) -> None:
            nonlocal best
            keeps = self.fit_budget(shape)
            model = self.build(keeps)
            acc = self.proxy(model)
            tried.append({"kind": kind, "shape": [round(u, 4) for u in shape], "keeps": keeps, "val_acc": acc,
                          "mac_reduction": self.base_macs / macs_of(model, self.ctx.example)})  # fmt: skip
            if best is None or acc > best[0]:
                best = (acc, model)

        for k, shape in enumerate(shapes):
            score(shape, "uniform" if k == 0 else "random")
        parents = sorted(tried, key=lambda t: -t["val_acc"])[:4]
        for k in range(SEARCH_MUTATIONS):
            parent = parents[k % len(parents)]["shape"]
            shape = [u * math.exp(0.2 * torch.randn(1, generator=gen).item()) for u in parent]
            score(shape, "mutation")
        assert best is not None
        return best[1], {"tried": tried, "uniform_val_acc": tried[0]["val_acc"], "best_val_acc": best[0]}


@METHODS.register("nc_macs_high_search")
def _nc_macs_high_search(base: nn.Module, ctx: Context) -> Pruned:
    search = AllocationSearch(base, ctx)
    model, found = search.run()
    high = ctx.config.high_mac_reduction
    label = (f"netcompress group L2, widths searched on BN-recalibrated validation accuracy "
             f"({SEARCH_RANDOM} random + {SEARCH_MUTATIONS} mutations) at {high:g}x fewer MACs + BN recal.")  # fmt: skip
    groups = [g.producers[0] for g in search.groups]
    info = {"label": label, "groups": groups, **found}
    return Pruned(model, info=info)  # its BatchNorm is already recalibrated (the proxy's pass)


@METHODS.register("tp_magnitude_macs_high_long")
def _tp_macs_high_long(base: nn.Module, ctx: Context) -> Pruned:
    pruned = METHODS.get("tp_magnitude_macs_high")(base, ctx)
    pruned.epochs_used = ctx.config.finetune_epochs - LONG_EPOCHS  # the harness trains LONG_EPOCHS
    pruned.info["label"] += f", fine-tuned {LONG_EPOCHS} epochs (bound: {LONG_EPOCHS // 5}x the budget)"
    return pruned


@METHODS.register("nc_latency_sens_long")
def _nc_latency_sens_long(base: nn.Module, ctx: Context) -> Pruned:
    pruned = row_pruned_model(base, ctx, "nc_latency_sens", "widths")
    pruned.epochs_used = ctx.config.finetune_epochs - LONG_EPOCHS  # the harness trains LONG_EPOCHS
    pruned.info["label"] += f", fine-tuned {LONG_EPOCHS} epochs (bound: {LONG_EPOCHS // 5}x the budget)"
    return pruned


@METHODS.register("scratch_macs_high")
def _scratch_macs_high(base: nn.Module, ctx: Context) -> Pruned:
    model = METHODS.get("tp_magnitude_macs_high")(base, ctx).model
    torch.manual_seed(ctx.protocol.seed + ctx.seed)
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    epochs = ctx.protocol.epochs + ctx.config.finetune_epochs
    spec = cp.model_spec(model_name_of(ctx))
    config = dataclasses.replace(cp.train_config(ctx.protocol, epochs=epochs, lr=spec["lr"]),
                                 seed=ctx.protocol.seed + ctx.seed)  # fmt: skip
    fit(
        model, ctx.train_loader, config=config, checkpoint_dir=ctx.work_dir / "scratch_macs_high", resume=True
    )
    label = (
        f"bound: Torch-Pruning's {ctx.config.high_mac_reduction:g}x widths trained from scratch "
        f"{epochs} epochs (baseline's {ctx.protocol.epochs} + {ctx.config.finetune_epochs})"
    )
    return Pruned(model, epochs_used=ctx.config.finetune_epochs, info={"label": label, "epochs": epochs})


def model_name_of(ctx: Context) -> str:
    """The protocol model a work folder belongs to (``<model>-<key>``)."""
    return ctx.work_dir.name.rsplit("-", 1)[0]
