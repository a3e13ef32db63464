"""Recipe steps for structured pruning: ``prune/channel``, ``prune/slimming``, ``prune/auto``, ``train/slimming``.

Example recipe steps (E1, network slimming)::

    - {op: train, method: slimming, epochs: 20, lr: 0.1, lambda_: 1.0e-4}
    - {op: prune, method: slimming, percent: 0.5}
    - {op: train, method: finetune, epochs: 20}

Each step returns the smaller model and a JSON-able summary; BN scaling-factor histograms are
written to ``ctx.out_dir / "bn_gammas.json"`` for the report. The prune steps then re-estimate
BatchNorm statistics on ``recalibrate_bn_batches`` training batches (default 10, 0 = off): after
channel removal they are stale and a pruned model scores at chance until they are; the summary's
``bn_recalibration`` holds the accuracy on a few validation batches before and after. With
``reconstruct_batches`` > 0 they first refit the weights to the unpruned model's layer outputs
(``reconstruct_weights``; summary ``reconstruction``), which recovers far more before any fine-tuning
(ResNet-20 at 3.5x fewer MACs: 61 % against 31 % with recalibration alone); then set
``recalibrate_bn_batches: 0``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import DataError
from netcompress.core.io import atomic_write_json
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.pruning.auto import DEFAULT_RATE_GRID, METHODS, TARGETS, prune_to_target
from netcompress.pruning.bn_recalibration import recalibrate_after_pruning, top1_on_batches
from netcompress.pruning.channel import SCOPES, check_round_to, prune_channels_with_summary
from netcompress.pruning.importance import IMPORTANCES
from netcompress.pruning.reconstruction import reconstruct_weights
from netcompress.pruning.slimming import BNL1Penalty, bn_gammas, gamma_histogram, slim
from netcompress.training.config import TrainConfig


@dataclasses.dataclass
class ChannelPruneConfig(Config):
    """Channel pruning with physical removal (see :func:`prune_channels`)."""

    ratio: float = 0.5
    importance: str = "l1"
    scope: str = "local"
    ignore: list[str] = dataclasses.field(default_factory=list)
    ratios: dict[str, float] | None = None
    round_to: int | str = 1  # or "auto": multiples of 8 in groups of >= 16 channels (see prune_to_target)
    min_channels: int = 1
    max_batches: int = 4  # batches of the training data used by importance="taylor"
    # BatchNorm statistics re-estimated on this many training batches after the prune (0 = off)
    recalibrate_bn_batches: int = 10
    # weights refit to the unpruned model's layer outputs on this many training batches (0 = off; see
    # reconstruct_weights); it runs before any BN recalibration, which it makes unnecessary
    reconstruct_batches: int = 0

    def __post_init__(self) -> None:
        check_range("recalibrate_bn_batches", self.recalibrate_bn_batches, 0)
        check_range("reconstruct_batches", self.reconstruct_batches, 0)
        check_range("ratio", self.ratio, 0.0, 1.0)
        check_choice("importance", self.importance, IMPORTANCES.names())
        check_choice("scope", self.scope, SCOPES)
        check_round_to(self.round_to)
        check_range("min_channels", self.min_channels, 1)
        check_range("max_batches", self.max_batches, 1)


@dataclasses.dataclass
class SlimmingConfig(Config):
    """Network slimming: global |gamma| threshold at ``percent`` of all prunable BN channels."""

    percent: float = 0.5
    min_channels: int = 1
    # BatchNorm statistics re-estimated on this many training batches after the prune (0 = off)
    recalibrate_bn_batches: int = 10
    # weights refit to the unpruned model's layer outputs on this many training batches (0 = off; see
    # reconstruct_weights); it runs before any BN recalibration, which it makes unnecessary
    reconstruct_batches: int = 0

    def __post_init__(self) -> None:
        check_range("recalibrate_bn_batches", self.recalibrate_bn_batches, 0)
        check_range("reconstruct_batches", self.reconstruct_batches, 0)
        check_range("percent", self.percent, 0.0, 1.0)
        check_range("min_channels", self.min_channels, 1)


@dataclasses.dataclass
class AutoPruneConfig(Config):
    """Automatic per-layer rates reaching ``reduction``x fewer MACs or parameters."""

    target: str = "macs"
    reduction: float = 2.0
    # the defaults of prune_to_target (see there for what was measured)
    importance: str = "group_l2"
    strategy: str = "uniform"  # the function's ``method``; a step's "method" key names the step itself
    max_batches: int = 2
    min_channels: int = 1
    round_to: int | str = "auto"  # multiples of 8 in groups of >= 16 channels; 1 = any count
    ignore: list[str] = dataclasses.field(default_factory=list)
    rate_grid: list[float] = dataclasses.field(default_factory=lambda: list(DEFAULT_RATE_GRID))
    # BatchNorm statistics re-estimated on this many training batches after the prune (0 = off)
    recalibrate_bn_batches: int = 10
    # weights refit to the unpruned model's layer outputs on this many training batches (0 = off; see
    # reconstruct_weights); it runs before any BN recalibration, which it makes unnecessary
    reconstruct_batches: int = 0

    def __post_init__(self) -> None:
        check_range("recalibrate_bn_batches", self.recalibrate_bn_batches, 0)
        check_range("reconstruct_batches", self.reconstruct_batches, 0)
        check_round_to(self.round_to)
        check_choice("target", self.target, list(TARGETS))
        check_choice("strategy", self.strategy, METHODS)
        check_choice("importance", self.importance, IMPORTANCES.names())
        check_range("reduction", self.reduction, 1.0)
        check_range("max_batches", self.max_batches, 1)
        for rate in self.rate_grid:
            check_range("rate_grid entry", rate, 0.0, 1.0)


@dataclasses.dataclass
class SlimmingTrainConfig(TrainConfig):
    """Sparsity training for network slimming: every TrainConfig field plus the BN L1 penalty."""

    lambda_: float = 1e-4
    threshold: float = 1e-2  # |gamma| below this counts as sparse in the per-epoch bn_sparsity

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("lambda_", self.lambda_, 0.0)
        check_range("threshold", self.threshold, 0.0)

    def train_config(self) -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in self.to_dict().items() if k in fields})


def _write_gammas(model: nn.Module, ctx: MethodData, name: str) -> dict[str, Any]:
    """BN scaling factors to ``step_dir/name`` (for histograms) and a compact histogram for the summary."""
    atomic_write_json(ctx.out_dir / name, {k: v.tolist() for k, v in bn_gammas(model).items()})
    return gamma_histogram(model)


def _finished(
    small: nn.Module, original: nn.Module, summary: dict[str, Any], config: Any, ctx: MethodData
) -> Result:
    """After the prune: weight reconstruction (``reconstruct_batches``), then BatchNorm recalibration
    (``recalibrate_bn_batches``; stale after channel removal). The summary gains ``reconstruction`` and
    ``bn_recalibration``, each with the accuracy on a few validation batches before and after."""
    if config.reconstruct_batches:
        if ctx.train_loader is None:
            raise DataError("weight reconstruction needs the training loader; set reconstruct_batches=0")
        before = top1_on_batches(small, ctx.val_loader, config.reconstruct_batches)
        report = reconstruct_weights(
            small, original, ctx.train_loader, kept_indices=summary["kept_indices"],
            num_batches=config.reconstruct_batches,
        )  # fmt: skip
        after = top1_on_batches(small, ctx.val_loader, config.reconstruct_batches)
        summary["reconstruction"] = {**report, "accuracy_before": before, "accuracy_after": after}
    summary["bn_recalibration"] = recalibrate_after_pruning(
        small,
        train_loader=ctx.train_loader,
        val_loader=ctx.val_loader,
        num_batches=config.recalibrate_bn_batches,
    )
    return Result(model=small, summary=_lean(summary))


def _lean(summary: dict[str, Any]) -> dict[str, Any]:
    """Drop the per-group member lists and kept indices from the recipe summary; metrics.json stays readable."""
    return {k: v for k, v in summary.items() if k not in ("groups", "kept_indices")}


@register_method("prune", "channel", config=ChannelPruneConfig)
def channel_step(model: nn.Module, config: ChannelPruneConfig, ctx: MethodData) -> Result:
    """Remove channels physically (L1/L2/FPGM/Taylor/BN-scale/random importance)."""
    small, summary = prune_channels_with_summary(
        model,
        ctx.example_inputs,
        ratio=config.ratio,
        importance=config.importance,
        scope=config.scope,
        ignore=config.ignore,
        ratios=config.ratios,
        round_to=config.round_to,
        min_channels=config.min_channels,
        loader=ctx.train_loader,
        max_batches=config.max_batches,
        seed=ctx.seed,
    )
    return _finished(small, model, summary, config, ctx)


@register_method("prune", "slimming", config=SlimmingConfig)
def slimming_step(model: nn.Module, config: SlimmingConfig, ctx: MethodData) -> Result:
    """Network slimming: prune channels whose BN |gamma| is under a global threshold."""
    histogram = _write_gammas(model, ctx, "bn_gammas_before.json")
    small, summary = slim(model, ctx.example_inputs, percent=config.percent, min_channels=config.min_channels)
    summary["bn_gamma_histogram"] = histogram
    return _finished(small, model, summary, config, ctx)


@register_method("prune", "auto", config=AutoPruneConfig)
def auto_step(model: nn.Module, config: AutoPruneConfig, ctx: MethodData) -> Result:
    """Choose per-layer rates automatically to reach a MAC or parameter reduction."""
    small, summary = prune_to_target(
        model,
        ctx.example_inputs,
        target=config.target,
        reduction=config.reduction,
        importance=config.importance,
        method=config.strategy,
        loader=ctx.val_loader if config.strategy == "sensitivity" else ctx.train_loader,
        max_batches=config.max_batches,
        min_channels=config.min_channels,
        round_to=config.round_to,
        ignore=config.ignore,
        rate_grid=config.rate_grid,
        seed=ctx.seed,
    )
    return _finished(small, model, summary, config, ctx)


@register_method("train", "slimming", config=SlimmingTrainConfig)
def slimming_train_step(model: nn.Module, config: SlimmingTrainConfig, ctx: MethodData) -> Result:
    """Sparsity training: fit with the BN L1 penalty; history rows carry bn_sparsity per epoch."""
    from netcompress.training.loop import fit  # the training area; imported when the step runs
    from netcompress.training.supervised import run_config, summarize

    train_config = run_config(config.train_config(), ctx)
    hook = BNL1Penalty(lambda_=config.lambda_, threshold=config.threshold)
    history = fit(
        model,
        ctx.train_loader,
        val_loader=ctx.val_loader,
        config=train_config,
        hooks=[hook, *ctx.extras.get("hooks", [])],
        checkpoint_dir=ctx.out_dir / "checkpoints",
        resume=True,
    )
    summary = summarize(history, train_config)
    summary.update(lambda_=config.lambda_, threshold=config.threshold)
    summary["final_bn_sparsity"] = history.rows[-1].get("bn_sparsity") if history.rows else None
    summary["bn_gamma_histogram"] = _write_gammas(model, ctx, "bn_gammas.json")
    # every |gamma| at the end: a sweep over lambda draws these as one histogram panel per lambda (E1)
    gammas = [abs(float(g)) for values in bn_gammas(model).values() for g in values.reshape(-1).tolist()]
    summary["histograms"] = {"BN scaling factor |gamma|": gammas}
    return Result(model=model, summary=summary, history=history.rows)
