"""What the pruning benchmark runs: its budget config, the methods (netcompress, Torch-Pruning,
torch.nn.utils.prune) and how each pruned model is finished. The harness is ``pruning.py``.

Methods (registry ``METHODS``; ``--methods`` picks some):

- ``dense_finetune``: the unpruned baseline trained for the same budget (the fair "unpruned" reference);
- ``nc_l1_global``: ``prune_to_target(target="macs", importance="l1", method="global")``;
- ``nc_slimming``: sparsity training with ``BNL1Penalty``, then ``slim`` at the share of channels
  that reaches the MAC budget;
- ``nc_sensitivity``: ``prune_to_target(method="sensitivity")`` (per-layer rates from accuracy drops);
- ``nc_l1_global_recal`` / ``nc_l1_global_cost_recal`` / ``nc_l2_uniform(_recal)``: ``prune_to_target`` with
  ``method="global"`` / ``"global_cost"`` (importance per MAC saved) / ``"uniform"`` (one ratio for every
  group, like Torch-Pruning); ``_recal`` = ``recalibrate_bn`` on 10 training batches before fine-tuning;
- ``tp_magnitude_recal``: ``tp_magnitude`` plus our BN recalibration (reported next to the plain one);
- ``tp_bn_scale`` / ``tp_magnitude``: Torch-Pruning ``MetaPruner`` with ``BNScaleImportance`` /
  ``MagnitudeImportance`` at their documented defaults (local, p=2), final classifier ignored;
- ``torch_unstructured`` / ``nc_unstructured``: global L1 unstructured masks; the netcompress one
  is also saved as a sparse ``.ncz`` file.
- ``nc_group_l2_*``: ``importance="group_l2"`` (filters + BN gamma + the consumers' input weights, the
  criterion of Torch-Pruning's MagnitudeImportance); ``_3steps`` reaches the same widths in three
  steps with an epoch of fine-tuning between them; ``_kd``: fine-tuned with KD from the unpruned model;
  ``_recon``: instead of BN recalibration, ``reconstruct_weights`` refits every layer to the unpruned
  model's outputs on 10 training batches.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cifar_protocol as cp
import torch
from finetune_recipes import recipe
from torch import nn

from netcompress.core import Config, Registry, check_range
from netcompress.distillation import SoftTargetDistillation
from netcompress.evaluation import count_macs, evaluate
from netcompress.pruning import (
    BNL1Penalty,
    prune_channels,
    prune_to_target,
    recalibrate_bn,
    reconstruct_weights,
    slim,
)
from netcompress.training import TrainConfig, fit

# constants, not PruningBenchConfig fields: the config is part of the cache key of every cached row
RECALIBRATE_BN_BATCHES = 10
RECONSTRUCT_BATCHES = 10


@dataclasses.dataclass
class PruningBenchConfig(Config):
    """Budget and targets shared by every method.

    Example:
        >>> PruningBenchConfig(finetune_epochs=5, mac_reduction=3.5).slim_sparsity_epochs
        2
    """

    mac_reduction: float = 3.5
    # 5 epochs, not 10-15: at a load average of 6 on 2 cores one full-size VGG epoch takes ~60 s
    finetune_epochs: int = 5
    finetune_lr: float = 0.02
    unstructured_amount: float = 0.9
    # a short sparsity phase needs a large lambda: the paper's 1e-4 over 160 epochs moves gamma by
    # ~lr*lambda*steps = 0.6; 5e-2 over 2 epochs (158 steps, mean lr 0.01) moves it by ~0.08
    slim_lambda: float = 5e-2
    slim_sparsity_epochs: int = 2
    # torch threads for everything a method trains (part of the cache key: another count, another trajectory);
    # one, because two threads spin against each other when the two cores are shared
    train_threads: int = 1
    latency_rounds: int = 5
    timing_threads: int = 1
    # the latency-target mode (pruning_latency.py): measured ORT batch-64 speed-up every method reaches
    latency_reduction: float = 2.5
    # ... and the MAC reduction of its high-compression pair (nc_macs_high vs tp_magnitude_macs_high)
    high_mac_reduction: float = 8.0
    # what the fine-tune epochs do (finetune_recipes.RECIPES; "default": SGD, cosine, finetune_lr)
    finetune_recipe: str = "default"

    def __post_init__(self) -> None:
        check_range("mac_reduction", self.mac_reduction, 1.0)
        check_range("finetune_epochs", self.finetune_epochs, 0)
        check_range("slim_sparsity_epochs", self.slim_sparsity_epochs, 0, self.finetune_epochs)
        check_range("unstructured_amount", self.unstructured_amount, 0.0, 1.0)
        check_range("latency_rounds", self.latency_rounds, 1)
        check_range("train_threads", self.train_threads, 1)
        check_range("timing_threads", self.timing_threads, 1)
        check_range("latency_reduction", self.latency_reduction, 1.0)
        check_range("high_mac_reduction", self.high_mac_reduction, 1.0)
        recipe(self.finetune_recipe)  # a clear error naming the known recipes


@dataclasses.dataclass
class Context:
    """What a method needs: the baseline, data, an example input and the MAC budget."""

    bundle: Any
    protocol: cp.ProtocolConfig
    config: PruningBenchConfig
    train_loader: Any
    test_loader: Any
    example: torch.Tensor
    mac_budget: int
    work_dir: Path
    seed: int = 0  # added to the protocol's seed for everything a method trains (a second fine-tune seed)


@dataclasses.dataclass
class Pruned:
    """A method's pruned model before fine-tuning, its training hooks and how to finish it."""

    model: nn.Module
    kind: str = "structured"  # structured | torch_masks | nc_masks: picks the finisher
    hooks: tuple[Any, ...] = ()
    epochs_used: int = 0  # fine-tuning epochs already spent (slimming's sparsity training)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


MethodFn = Callable[[nn.Module, Context], Pruned]
METHODS: Registry[MethodFn] = Registry("pruning benchmark method")
FINISHERS: Registry[Callable[[nn.Module, Context, str], dict[str, Any]]] = Registry("finisher")


def macs_of(model: nn.Module, example: torch.Tensor) -> int:
    return int(count_macs(model, example)[0])


def bisect_ratio(
    prune_at: Callable[[float], nn.Module], fits: Callable[[nn.Module], bool], *, hi: float = 0.95
) -> float:
    """Smallest ratio in [0, hi] (to 1e-3) whose pruned model fits the budget; fewer channels = fewer MACs."""
    lo = 0.0
    if not fits(prune_at(hi)):
        raise cp.ConfigError(f"the MAC budget cannot be reached even at ratio {hi}")
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(prune_at(mid)) else (mid, hi)
    return hi


def finetune_config(ctx: Context, *, epochs: int) -> TrainConfig:
    """The protocol's training settings (``cp.train_config``) at the fine-tune lr, seeded by ``ctx.seed``."""
    config = cp.train_config(ctx.protocol, epochs=epochs, lr=ctx.config.finetune_lr)
    return dataclasses.replace(config, seed=ctx.protocol.seed + ctx.seed)


@METHODS.register("dense_finetune")
def _dense(base: nn.Module, ctx: Context) -> Pruned:
    return Pruned(copy.deepcopy(base), info={"label": "unpruned + same fine-tune"})


@METHODS.register("nc_l1_global")
def _nc_l1(base: nn.Module, ctx: Context) -> Pruned:
    small, summary = prune_to_target(
        base, ctx.example, target="macs", reduction=ctx.config.mac_reduction, importance="l1", method="global",
        round_to="auto",
    )  # fmt: skip
    return Pruned(
        small, info={"label": "netcompress L1, global (prune_to_target)", "arch": summary["architecture"]}
    )


def with_recalibration(pruned: Pruned, ctx: Context) -> Pruned:
    """Re-estimate BatchNorm statistics (``recalibrate_bn``) on the training data; records the accuracy before.

    Part of netcompress's structured pruning (the recipe steps' ``recalibrate_bn_batches``); given
    to a Torch-Pruning model only in a separately named row, so its documented default is reported too.
    """
    acc_stale = evaluate(pruned.model, ctx.test_loader)["accuracy"]
    summary = recalibrate_bn(pruned.model, ctx.train_loader, num_batches=RECALIBRATE_BN_BATCHES)
    pruned.info.update(acc_stale_bn=acc_stale, bn_recalibration=summary)
    return pruned


def with_reconstruction(pruned: Pruned, base: nn.Module, ctx: Context, kept: dict[str, Any]) -> Pruned:
    """Refit the pruned weights to the unpruned model's layer outputs (``reconstruct_weights``) on
    ``RECONSTRUCT_BATCHES`` training batches; records the accuracy before and the per-layer errors."""
    acc_stale = evaluate(pruned.model, ctx.test_loader)["accuracy"]
    report = reconstruct_weights(
        pruned.model, base, ctx.train_loader, kept_indices=kept, num_batches=RECONSTRUCT_BATCHES
    )
    errors = {row["name"]: round(row["error_after"], 4) for row in report["layers"]}
    pruned.info.update(acc_stale_bn=acc_stale, reconstruction_errors=errors)
    return pruned


def _nc_auto(
    strategy: str,
    importance: str,
    label: str,
    *,
    recalibrate: bool,
    round_to: int = 1,
    reconstruct: bool = False,
) -> MethodFn:
    def _run(base: nn.Module, ctx: Context) -> Pruned:
        small, summary = prune_to_target(
            base, ctx.example, target="macs", reduction=ctx.config.mac_reduction, importance=importance,
            method=strategy, round_to=round_to,
        )  # fmt: skip
        info = {"label": label, "arch": summary["architecture"], "search_value": summary["search_value"]}
        pruned = Pruned(small, info=info)
        if reconstruct:
            return with_reconstruction(pruned, base, ctx, summary["kept_indices"])
        return with_recalibration(pruned, ctx) if recalibrate else pruned

    return _run


NC_AUTO = {
    "nc_l1_global_recal": ("global", "l1", "netcompress L1, global + BN recal."),
    "nc_l1_global_cost_recal": ("global_cost", "l1", "netcompress L1, global per MAC + BN recal."),
    "nc_l2_uniform": ("uniform", "l2", "netcompress L2, uniform (no BN recal.)"),
    "nc_l2_uniform_recal": ("uniform", "l2", "netcompress L2, uniform + BN recal."),
}
for _name, (_strategy, _importance, _label) in NC_AUTO.items():
    METHODS.register(_name, _nc_auto(_strategy, _importance, _label, recalibrate=_name.endswith("_recal")))
# kept channels rounded up to multiples of 8: odd widths (17 channels at full resolution) ran ~35 % slower
# at batch 64 than Torch-Pruning's 16 for the same MACs (oneDNN blocks channels by 8/16)
for _name, _strategy, _importance in [("nc_l2_uniform_r8_recal", "uniform", "l2"),
                                      ("nc_l1_global_r8_recal", "global", "l1")]:  # fmt: skip
    _label = f"netcompress {_importance.upper()}, {_strategy}, channels x8 + BN recal."
    METHODS.register(_name, _nc_auto(_strategy, _importance, _label, recalibrate=True, round_to=8))


@METHODS.register("nc_sensitivity")
def _nc_sensitivity(base: nn.Module, ctx: Context) -> Pruned:
    small, summary = prune_to_target(
        base, ctx.example, target="macs", reduction=ctx.config.mac_reduction, importance="l1",
        method="sensitivity", loader=ctx.train_loader, max_batches=4, round_to="auto",
    )  # fmt: skip
    return Pruned(small, info={"label": "netcompress L1, sensitivity rates", "arch": summary["architecture"]})


@METHODS.register("nc_slimming")
def _nc_slimming(base: nn.Module, ctx: Context) -> Pruned:
    sparse = copy.deepcopy(base)
    epochs = ctx.config.slim_sparsity_epochs
    penalty = BNL1Penalty(lambda_=ctx.config.slim_lambda)
    history = fit(sparse, ctx.train_loader, config=finetune_config(ctx, epochs=epochs), hooks=[penalty])
    percent = bisect_ratio(
        lambda p: slim(sparse, ctx.example, percent=p)[0], lambda m: macs_of(m, ctx.example) <= ctx.mac_budget
    )
    small, summary = slim(sparse, ctx.example, percent=percent)
    info = {
        "label": f"netcompress slimming ({epochs} ep. BN-L1 {ctx.config.slim_lambda:g}, then slim)",
        "percent": percent,
        "bn_sparsity": [row.get("bn_sparsity") for row in history.rows],
        "arch": summary["architecture"],
    }
    return Pruned(small, epochs_used=epochs, info=info)


def _tp() -> Any:
    """Torch-Pruning, imported when a peer row runs: the peer is an optional extra (pip install -e ".[bench]")."""
    try:
        import torch_pruning
    except ModuleNotFoundError:
        raise SystemExit(
            'Torch-Pruning is not installed: pip install -e ".[bench]" (or skip its rows with --methods)'
        ) from None
    return torch_pruning


def _tp_method(importance: Callable[[], Any], label: str) -> MethodFn:
    def _run(base: nn.Module, ctx: Context) -> Pruned:
        def prune_at(ratio: float) -> nn.Module:
            model = copy.deepcopy(base).eval()
            final = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            pruner = _tp().pruner.MetaPruner(
                model, ctx.example, importance=importance(), pruning_ratio=ratio, ignored_layers=[final]
            )
            pruner.step()
            return model

        # MACs stop falling monotonically near ratio 1 (Torch-Pruning then leaves whole groups alone)
        ratio = bisect_ratio(prune_at, lambda m: macs_of(m, ctx.example) <= ctx.mac_budget, hi=0.8)
        return Pruned(prune_at(ratio), info={"label": label, "pruning_ratio": ratio})

    return _run


METHODS.register(
    "tp_bn_scale",
    _tp_method(lambda: _tp().importance.BNScaleImportance(), "Torch-Pruning BNScaleImportance (local)"),
)
METHODS.register(
    "tp_magnitude",
    _tp_method(
        lambda: _tp().importance.MagnitudeImportance(p=2), "Torch-Pruning MagnitudeImportance p=2 (local)"
    ),
)


@METHODS.register("tp_magnitude_recal")
def _tp_magnitude_recal(base: nn.Module, ctx: Context) -> Pruned:
    pruned = METHODS.get("tp_magnitude")(base, ctx)
    pruned.info["label"] = "Torch-Pruning MagnitudeImportance p=2 (local) + our BN recal."
    return with_recalibration(pruned, ctx)


# KD from the unpruned model during the same fine-tuning epochs; T and alpha as the distillation
# benchmark (fixed there before any run), not tuned here
KD_TEMPERATURE, KD_ALPHA = 4.0, 0.9


def kd_hook(base: nn.Module) -> SoftTargetDistillation:
    return SoftTargetDistillation(copy.deepcopy(base).eval(), temperature=KD_TEMPERATURE, alpha=KD_ALPHA)


def _with_kd(method: str) -> MethodFn:
    def _run(base: nn.Module, ctx: Context) -> Pruned:
        pruned = METHODS.get(method)(base, ctx)
        pruned.hooks = (*pruned.hooks, kd_hook(base))
        pruned.info["label"] += " + KD from the unpruned model"
        return pruned

    return _run


def _progressive(importance: str, strategy: str, *, stages: int, kd: bool) -> MethodFn:
    """The one-shot method's final widths (``prune_to_target`` on the baseline, channels x8), reached in
    ``stages`` equal steps per group with the importance re-scored on the current model each time; one
    epoch at the constant fine-tune lr between steps, the rest of the budget (cosine) after the last."""

    def _run(base: nn.Module, ctx: Context) -> Pruned:
        _, target = prune_to_target(
            base, ctx.example, target="macs", reduction=ctx.config.mac_reduction, importance=importance,
            method=strategy, round_to=8,
        )  # fmt: skip
        widths = {
            g["producers"][0]: (g["channels"], g["channels_after"]) for g in target["groups"] if g["prunable"]
        }
        model, hooks = copy.deepcopy(base), [kd_hook(base)] if kd else []
        stages_here = max(1, min(stages, ctx.config.finetune_epochs))  # a 1-epoch smoke budget: one step
        between = dataclasses.replace(finetune_config(ctx, epochs=1), schedule="constant")
        current = dict.fromkeys(widths, 0)
        for stage in range(1, stages_here + 1):
            if stage > 1:
                fit(model, ctx.train_loader, config=between, hooks=hooks)
            ratios = {}
            for layer, (before, after) in widths.items():
                now = before - current[layer]
                keep = before - round((before - after) * stage / stages_here)
                ratios[layer] = (now - keep) / now
                current[layer] = before - keep
            model = prune_channels(model, ctx.example, ratios=ratios, importance=importance)
            recalibrate_bn(model, ctx.train_loader, num_batches=RECALIBRATE_BN_BATCHES)
        label = f"netcompress {importance}, {strategy} widths x8, in {stages_here} steps" + (
            " + KD" if kd else ""
        )
        return Pruned(model, hooks=tuple(hooks), epochs_used=stages_here - 1, info={"label": label})

    return _run


for _name, (_strategy, _importance) in {
    "nc_group_l2_uniform_r8_recal": ("uniform", "group_l2"),
    "nc_group_l2_global_r8_recal": ("global", "group_l2"),
    "nc_group_l2_uniform_recal": ("uniform", "group_l2"),
}.items():
    _x8 = "_r8" in _name
    _label = f"netcompress group L2, {_strategy}{', channels x8' if _x8 else ''} + BN recal."
    METHODS.register(
        _name, _nc_auto(_strategy, _importance, _label, recalibrate=True, round_to=8 if _x8 else 1)
    )
METHODS.register(
    "nc_group_l2_uniform_r8_recon",
    _nc_auto(
        "uniform", "group_l2", "netcompress group L2, uniform, channels x8 + weight reconstruction",
        recalibrate=False, round_to=8, reconstruct=True,
    ),
)  # fmt: skip
for _name in (
    "nc_l1_global_r8_recal",
    "nc_group_l2_uniform_r8_recal",
    "nc_group_l2_global_r8_recal",
    "tp_magnitude",
):
    METHODS.register(f"{_name}_kd", _with_kd(_name))
for _strategy in ("uniform", "global"):
    for _kd in (False, True):
        _name = f"nc_group_l2_{_strategy}_3steps" + ("_kd" if _kd else "")
        METHODS.register(_name, _progressive("group_l2", _strategy, stages=3, kd=_kd))


import pruning_unstructured  # noqa: E402, F401  (registers the unstructured rows and their finishers)
