"""What one ``fit`` call trains and how it is checkpointed and resumed (``last.pt``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.training import checkpointing as ckpt
from netcompress.training.config import TrainConfig
from netcompress.training.history import History
from netcompress.training.hooks import hook_states, load_hook_states
from netcompress.training.runtime import rng_state, set_rng_state
from netcompress.training.schedules import LRSchedule


@dataclasses.dataclass
class Run:
    """What one fit call trains and what a checkpoint must capture of it."""

    config: TrainConfig
    model: nn.Module
    extra: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    hooks: list[Any]
    loader: Iterable
    scaler: Any = None  # torch.amp.GradScaler; enabled only for precision="fp16"
    called: bool = False  # the model has run on a batch of this fit call
    history: History = dataclasses.field(default_factory=History)
    # best validation epoch so far: epoch, val_acc, and a weights snapshot
    best: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"epoch": None, "val_acc": float("-inf"), "weights": None}
    )


def as_config(config: TrainConfig | dict[str, Any] | None) -> TrainConfig:
    if config is None:
        return TrainConfig()
    if isinstance(config, dict):
        return TrainConfig.from_dict(config, where="fit config")
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
    return config


def save_last(directory: Path, run: Run) -> None:
    state = {
        "config": run.config.to_dict(),
        **ckpt.weights_snapshot(run.model, run.extra),
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "epochs_done": run.history.last["epoch"] + 1,
        "history": run.history.to_dict(),
        "best": {"epoch": run.best["epoch"], "val_acc": run.best["val_acc"]},
        "hooks": hook_states(run.hooks),
        "rng": rng_state(run.loader),
        "scaler": run.scaler.state_dict(),
    }
    ckpt.save_last(directory, state)
    run.history.to_json(directory / ckpt.HISTORY_FILE)


def load_resume_state(directory: Path, run: Run) -> dict[str, Any]:
    """``last.pt`` (and the best weights it refers to), read on rank 0 and sent to every rank."""
    state = ckpt.load_last(directory, config_dict=run.config.to_dict())
    state["best_weights"] = ckpt.load_best(directory) if state["best"]["epoch"] is not None else None
    return state


def resume_run(run: Run, state: dict[str, Any]) -> int:
    """Load a ``last.pt`` state into ``run``; return the number of epochs already done."""
    ckpt.load_weights(run.model, run.extra, state)
    try:
        run.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state in {ckpt.LAST_FILE} does not fit: {exc}") from None
    run.schedule.load_state_dict(state["schedule"])
    run.history.rows[:] = state["history"]["rows"]
    run.history.best_epoch = state["history"].get("best_epoch")
    run.best.update(epoch=state["best"]["epoch"], val_acc=state["best"]["val_acc"])
    run.best["weights"] = state["best_weights"]
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    load_hook_states(run.hooks, state.get("hooks", []))
    set_rng_state(state["rng"], run.loader)
    return int(state["epochs_done"])
