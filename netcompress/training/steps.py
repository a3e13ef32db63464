"""Recipe steps ``train/supervised`` and ``train/finetune``: run :func:`fit` inside a recipe.

Example recipe step::

    - {op: train, method: supervised, epochs: 5, lr: 0.05, schedule: cosine}
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from netcompress.core.methods import MethodData, Result, register_method
from netcompress.training.config import TrainConfig
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
        # a run killed mid-step continues from the last finished epoch
        checkpoint_dir=ctx.out_dir / "checkpoints",
        resume=True,
    )
    return Result(model=model, summary=summarize(history, config), history=history.rows)


@dataclasses.dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tuning after compression: the fields and defaults of TrainConfig."""


@register_method("train", "finetune", config=FinetuneConfig)
def finetune_step(model: nn.Module, config: FinetuneConfig, ctx: MethodData) -> Result:
    """Fine-tune after compression: the same loop as ``train/supervised``."""
    return train_step(model, config, ctx)
