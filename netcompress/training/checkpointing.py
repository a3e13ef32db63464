"""The files ``fit`` keeps in ``checkpoint_dir``: ``last.pt``, ``best.pt`` and ``history.json``.

``last.pt`` holds everything needed to continue as if never stopped (weights, optimiser,
schedule position, finished epochs, history, best-so-far, hook states, RNG states);
``best.pt`` holds the weights of the best validation epoch. Every write is atomic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import CheckpointError
from netcompress.core.io import atomic_torch_save, load_checkpoint

LAST_FILE = "last.pt"
BEST_FILE = "best.pt"
HISTORY_FILE = "history.json"
FORMAT = "netcompress.fit/1"
LAST_KEYS = ("format", "model", "extra_parameters", "optimizer", "schedule", "epochs_done", "history", "rng")

# Fields a resumed run may change: they do not alter what one epoch computes.
RESUMABLE_CHANGES = ("epochs", "progress", "device", "keep_best")


def weights_snapshot(model: nn.Module, extra_parameters: list[nn.Parameter]) -> dict[str, Any]:
    """A detached CPU copy of the model's state dict and the extra parameters."""
    return {
        "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "extra_parameters": [p.detach().to("cpu", copy=True) for p in extra_parameters],
    }


def load_weights(model: nn.Module, extra_parameters: list[nn.Parameter], snapshot: dict[str, Any]) -> None:
    """Copy a :func:`weights_snapshot` back into ``model`` and the extra parameters, in place."""
    try:
        model.load_state_dict(snapshot["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit this model: {exc}") from None
    saved = snapshot["extra_parameters"]
    if len(saved) != len(extra_parameters):
        raise CheckpointError(
            f"checkpoint holds {len(saved)} extra parameters, fit was given {len(extra_parameters)}"
        )
    with torch.no_grad():
        for p, value in zip(extra_parameters, saved):
            p.copy_(value)


def save_best(directory: Path, snapshot: dict[str, Any], *, epoch: int, val_acc: float) -> Path:
    return atomic_torch_save(
        {"format": FORMAT, **snapshot, "epoch": epoch, "val_acc": val_acc}, directory / BEST_FILE, sign=True
    )


def save_last(directory: Path, state: dict[str, Any]) -> Path:
    return atomic_torch_save({"format": FORMAT, **state}, directory / LAST_FILE, sign=True)


def load_last(directory: Path, *, config_dict: dict[str, Any]) -> dict[str, Any]:
    """Read ``last.pt``; refuse one from another kind of file or from a different config.

    Example:
        >>> state = load_last(Path("ckpt"), config_dict=TrainConfig().to_dict())
    """
    path = directory / LAST_FILE
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fit checkpoint (format {FORMAT!r})")
    missing = [k for k in LAST_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    saved = state.get("config", {})
    changed = sorted(
        k
        for k in set(saved) | set(config_dict)
        if k not in RESUMABLE_CHANGES and saved.get(k) != config_dict.get(k)
    )
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {config_dict.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"cannot resume from {path}: the config changed ({detail}); "
            f"only {', '.join(RESUMABLE_CHANGES)} may change, or use a new checkpoint_dir"
        )
    return state


def load_best(directory: Path) -> dict[str, Any]:
    state = load_checkpoint(directory / BEST_FILE)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{directory / BEST_FILE} is not a fit checkpoint (format {FORMAT!r})")
    return state
