"""The methods ``train/supervised`` and ``train/finetune``: :func:`fit` as a registered method.

Their configs are :class:`TrainConfig` and :class:`FinetuneConfig` (``training/config.py``);
``run_config`` and ``summarize`` are the glue every training method shares (the run's seed and
device, the JSON summary of a History).

Example recipe step::

    - {op: train, method: supervised, epochs: 5, lr: 0.05, schedule: cosine}

Example (Python, same weights as the step)::

    result = apply(model, TrainConfig(epochs=5), MethodData(train_loader=train, val_loader=val))
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from netcompress.core.methods import MethodData, Result, register_method
from netcompress.training.config import FinetuneConfig, TrainConfig
from netcompress.training.history import History
from netcompress.training.loop import fit

_DEFAULTS = TrainConfig()


def run_config(config: TrainConfig, ctx: MethodData) -> TrainConfig:
    """The config a step trains with: the run's seed and device unless the step set its own.

    A step's ``seed``/``device`` left at the defaults follow the run (``ctx.seed``, ``ctx.device``),
    so ``overrides=["seed=1"]`` reaches training; the bar shows only when the run shows progress.

    Example:
        >>> run_config(TrainConfig(epochs=2), ctx).seed == ctx.seed
        True
    """
    changes: dict[str, Any] = {"progress": config.progress and ctx.progress}
    if config.seed == _DEFAULTS.seed:
        changes["seed"] = ctx.seed
    if config.device == _DEFAULTS.device:
        changes["device"] = ctx.device
    return dataclasses.replace(config, **changes)


def summarize(history: History, config: TrainConfig) -> dict[str, Any]:
    """The JSON-able summary of a training run (final and best figures, the config used).

    Example:
        >>> summarize(history, config)["best_val_acc"]
    """
    last = history.last or {}
    best = next((r for r in history.rows if r["epoch"] == history.best_epoch), None)
    return {
        "epochs": len(history),
        "final_train_loss": last.get("train_loss"),
        "final_train_acc": last.get("train_acc"),
        "final_val_loss": last.get("val_loss"),
        "final_val_acc": last.get("val_acc"),
        "best_epoch": history.best_epoch,
        "best_val_acc": best["val_acc"] if best else None,
        "kept_best": bool(config.keep_best and history.best_epoch is not None),
        "train_time_s": round(sum(r.get("time_s", 0.0) for r in history.rows), 3),
        "config": config.to_dict(),
    }


@register_method("train", "supervised", config=TrainConfig)
def train_step(model: nn.Module, config: TrainConfig, ctx: MethodData) -> Result:
    """Train the model with cross entropy (the fit loop); resumes inside the step after a kill."""
    config = run_config(config, ctx)
    history = fit(
        model,
        ctx.train_loader,
        val_loader=ctx.val_loader,
        config=config,
        hooks=list(ctx.extras.get("hooks", [])),
        # a run killed mid-step continues from the last finished epoch; no folder: nothing written
        checkpoint_dir=ctx.out_dir / "checkpoints" if ctx.out_dir is not None else None,
        resume=ctx.out_dir is not None,
    )
    return Result(model=model, summary=summarize(history, config), history=history.rows)


@register_method("train", "finetune", config=FinetuneConfig)
def finetune_step(model: nn.Module, config: FinetuneConfig, ctx: MethodData) -> Result:
    """Fine-tune after compression: the same loop as ``train/supervised``."""
    return train_step(model, config, ctx)
