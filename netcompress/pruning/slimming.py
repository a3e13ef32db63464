"""Network slimming (Liu et al. 2017): L1 sparsity on BatchNorm scales, then prune small-|gamma| channels.

Training with :class:`BNL1Penalty` as a hook of :func:`netcompress.training.fit` adds the
subgradient ``lambda * sign(gamma)`` to every BatchNorm weight gradient, pushing unneeded
channels' scales toward zero. :func:`slim` then takes one global threshold on ``|gamma|`` over
all prunable BatchNorm layers and rebuilds a physically smaller model through the channel
dependency graph (so residual and concatenated channels stay consistent).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.core.config import check_range
from netcompress.core.errors import UnsupportedModelError
from netcompress.core.io import atomic_write_json
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.pruning.channel import ChannelPlan, apply_channel_plan
from netcompress.pruning.channel_report import pruning_summary
from netcompress.pruning.graph_tracing import build_channel_graph
from netcompress.pruning.recovery import RecoveryFields, recover
from netcompress.training.config import TrainConfig


def _batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    }


def bn_gammas(model: nn.Module) -> dict[str, np.ndarray]:
    """The scaling factors (signed BN weights) of every affine BatchNorm layer, for histograms.

    Example:
        >>> {name: g.shape for name, g in bn_gammas(model).items()}
        {'features.1': (64,), ...}
    """
    return {name: m.weight.detach().cpu().float().numpy().copy() for name, m in _batchnorms(model).items()}


def bn_sparsity(model: nn.Module, *, threshold: float = 1e-2) -> float:
    """Share of BatchNorm scaling factors with ``|gamma| < threshold`` (0.0 when there are none).

    Example:
        >>> bn_sparsity(model, threshold=1e-2)
        0.0
    """
    gammas = [m.weight.detach().abs() for m in _batchnorms(model).values()]
    if not gammas:
        return 0.0
    values = torch.cat(gammas)
    return float((values < threshold).float().mean())


def gamma_histogram(model: nn.Module, *, bins: int = 40) -> dict[str, Any]:
    """JSON-able histogram of ``|gamma|`` over all BatchNorm layers: ``{"edges": [...], "counts": [...]}``."""
    values = np.concatenate([np.abs(g) for g in bn_gammas(model).values()] or [np.zeros(0)])
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": edges.tolist(), "counts": counts.tolist(), "num_values": int(values.size)}


class BNL1Penalty:
    """Training hook for sparsity training: ``grad(gamma) += lambda_ * sign(gamma)`` after backward.

    ``epoch_end`` reports ``bn_sparsity`` (share of ``|gamma| < threshold``) and
    ``bn_gamma_mean_abs``, which :func:`fit` merges into the epoch's history row.

    Example:
        >>> fit(model, train_loader, config=TrainConfig(epochs=5), hooks=[BNL1Penalty(lambda_=1e-4)])
    """

    def __init__(self, *, lambda_: float = 1e-4, threshold: float = 1e-2) -> None:
        check_range("lambda_", lambda_, 0.0)
        check_range("threshold", threshold, 0.0)
        self.lambda_ = float(lambda_)
        self.threshold = float(threshold)

    def after_backward(self, model: nn.Module) -> None:
        if self.lambda_ == 0.0:
            return
        for module in _batchnorms(model).values():
            weight = module.weight
            if not weight.requires_grad:
                continue
            penalty = self.lambda_ * torch.sign(weight.detach())
            if weight.grad is None:
                weight.grad = penalty.clone()
            else:
                weight.grad.add_(penalty)

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        gammas = [m.weight.detach().abs() for m in _batchnorms(model).values()]
        mean_abs = float(torch.cat(gammas).mean()) if gammas else 0.0
        return {"bn_sparsity": bn_sparsity(model, threshold=self.threshold), "bn_gamma_mean_abs": mean_abs}


@dataclasses.dataclass
class SlimmingConfig(RecoveryFields):
    """``prune/slimming`` and :func:`slim`: global |gamma| threshold at ``percent`` of all prunable BN channels."""

    percent: float = 0.5
    min_channels: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("percent", self.percent, 0.0, 1.0)
        check_range("min_channels", self.min_channels, 1)


@dataclasses.dataclass
class SlimmingTrainConfig(TrainConfig):
    """``train/slimming``: every TrainConfig field plus the BN L1 penalty of :class:`BNL1Penalty`."""

    lambda_: float = 1e-4
    threshold: float = 1e-2  # |gamma| below this counts as sparse in the per-epoch bn_sparsity

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("lambda_", self.lambda_, 0.0)
        check_range("threshold", self.threshold, 0.0)


def slim(
    model: nn.Module,
    example_inputs: Any,
    *,
    percent: float = SlimmingConfig.percent,
    min_channels: int = SlimmingConfig.min_channels,
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove the ``percent`` share of channels with the smallest ``|gamma|``; return (smaller copy, summary).

    The threshold is the ``|gamma|`` at position ``int(total * percent)`` of all prunable BatchNorm
    scales sorted ascending; a channel goes when every BatchNorm on it is below the threshold (a
    residual channel is judged by all of its BNs). At least ``min_channels`` stay per group.
    The summary holds the threshold, per-layer ``"total channel / remaining channel"`` lines and
    the rebuilt architecture (``"Conv2d(3, 51)"`` ...). ``model`` is not modified.

    Example:
        >>> small, summary = slim(vgg, torch.randn(2, 3, 32, 32), percent=0.5)
        >>> summary["architecture"][0]
        'Conv2d(3, 32)'
    """
    check_range("percent", percent, 0.0, 1.0)
    check_range("min_channels", min_channels, 1)
    graph = build_channel_graph(model, example_inputs)
    abs_gammas = {name: m.weight.detach().abs().tolist() for name, m in _batchnorms(model).items()}
    unit_gammas: dict[int, list[float]] = {}  # unit id -> |gamma| of each BN on it
    groups = []
    for group in graph.prunable_groups():
        bns = {n for n in group.out_layers if graph.layers[n].kind == "batchnorm" and n in abs_gammas}
        if not bns:
            continue
        groups.append(group)
        for uid, unit in zip(group.unit_ids, group.units):
            unit_gammas[uid] = [abs_gammas[n][i] for n, dim, i in unit if n in bns and dim == "out"]
    if not unit_gammas:
        raise UnsupportedModelError(f"{type(model).__name__} has no prunable BatchNorm layer to slim")
    values = sorted(g for gs in unit_gammas.values() for g in gs)
    threshold = values[min(int(len(values) * percent), len(values) - 1)] if percent < 1 else math.inf
    pruned: set[int] = set()
    for group in groups:
        ranked = sorted(group.unit_ids, key=lambda u: max(unit_gammas[u]), reverse=True)
        below = [u for u in ranked[min_channels:] if max(unit_gammas[u]) < threshold]
        pruned |= set(below)
    plan = ChannelPlan(graph=graph, pruned_units=pruned, group_ratios={})
    small = apply_channel_plan(model, plan, example_inputs)
    summary = pruning_summary(model, small, plan, example_inputs, method="slimming", percent=percent)
    keep = plan.keep_indices()
    summary["threshold"] = float(threshold) if math.isfinite(threshold) else None
    summary["bn_layers"] = [
        {
            "name": n,
            "total_channels": len(graph.layers[n].out_labels),
            "remaining_channels": len(keep[n]["out"]),
        }
        for g in groups
        for n in g.out_layers
        if graph.layers[n].kind == "batchnorm"
    ]
    summary["bn_layers"].sort(key=lambda row: list(graph.layers).index(row["name"]))
    summary["per_layer_lines"] = [
        f"layer {row['name']}: total channel {row['total_channels']} / remaining channel {row['remaining_channels']}"
        for row in summary["bn_layers"]
    ]
    return small, summary


def write_gammas(model: nn.Module, out_dir: Any, name: str) -> dict[str, Any]:
    """BN scaling factors to ``out_dir/name`` (for histograms; nothing without an out_dir) and a compact
    histogram for the summary."""
    if out_dir is not None:
        atomic_write_json(out_dir / name, {k: v.tolist() for k, v in bn_gammas(model).items()})
    return gamma_histogram(model)


@register_method("prune", "slimming", config=SlimmingConfig)
def slimming(model: nn.Module, config: SlimmingConfig, data: MethodData) -> Result:
    """Network slimming: prune channels whose BN |gamma| is under a global threshold."""
    histogram = write_gammas(model, data.out_dir, "bn_gammas_before.json")
    small, summary = slim(
        model, data.example_inputs, percent=config.percent, min_channels=config.min_channels
    )
    summary["bn_gamma_histogram"] = histogram
    return recover(small, model, summary, config, data)


@register_method("train", "slimming", config=SlimmingTrainConfig)
def slimming_train(model: nn.Module, config: SlimmingTrainConfig, data: MethodData) -> Result:
    """Sparsity training: fit with the BN L1 penalty; history rows carry bn_sparsity per epoch."""
    from netcompress.pruning.finetune import run_train_config
    from netcompress.training.loop import fit  # the training area; imported when the method runs
    from netcompress.training.supervised import summarize

    train_config = run_train_config(config.train_config(), data)
    hook = BNL1Penalty(lambda_=config.lambda_, threshold=config.threshold)
    history = fit(
        model,
        data.train_loader,
        val_loader=data.val_loader,
        config=train_config,
        hooks=[hook, *data.extras.get("hooks", [])],
        checkpoint_dir=data.out_dir / "checkpoints" if data.out_dir is not None else None,
        resume=True,
    )
    summary = summarize(history, train_config)
    summary.update(lambda_=config.lambda_, threshold=config.threshold)
    summary["final_bn_sparsity"] = history.rows[-1].get("bn_sparsity") if history.rows else None
    summary["bn_gamma_histogram"] = write_gammas(model, data.out_dir, "bn_gammas.json")
    # every |gamma| at the end: a sweep over lambda draws these as one histogram panel per lambda (E1)
    gammas = [abs(float(g)) for values in bn_gammas(model).values() for g in values.reshape(-1).tolist()]
    summary["histograms"] = {"BN scaling factor |gamma|": gammas}
    return Result(model=model, summary=summary, history=history.rows)
