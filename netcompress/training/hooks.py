"""The hook seam of the training loop: regularisers, mask keepers and loggers plug in here.

A hook implements any subset of these methods; :func:`netcompress.training.fit` calls them
at fixed points, so a method (the BN L1 penalty of network slimming, pruning masks kept at
zero during fine-tuning, a distillation loss) needs no loop of its own.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

# Keys fit writes itself into every history row; a hook's epoch_end dict may not reuse them.
CORE_ROW_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "time_s", "acc_metric")


@runtime_checkable
class TrainingHook(Protocol):
    """Every method is optional; the loop checks with ``hasattr``.

    - ``loss(model, inputs, outputs, targets, loss) -> Tensor``: return a replacement loss
      (e.g. add a penalty, or a distillation term). Called before ``backward``.
    - ``after_backward(model)``: edit gradients (e.g. add ``lambda * sign(gamma)``).
      Gradient clipping (``TrainConfig.grad_clip_norm``) comes after these hooks.
    - ``after_step(model)``: after ``optimizer.step()`` (e.g. re-apply pruning masks).
    - ``epoch_start(model, epoch)`` / ``epoch_end(model, epoch) -> dict``: the dict returned
      by ``epoch_end`` is merged into that epoch's history row (e.g. BN sparsity).
      ``epoch`` is the 0-based epoch index, the same number as the history row's ``epoch``.
      ``epoch_start`` runs after ``model.train()``, so a hook may put layers back in eval mode.
    - ``state_dict() -> dict`` / ``load_state_dict(state)``: a hook that keeps state across
      epochs (a step counter, a moving average) has it saved in ``last.pt`` and restored on
      ``resume=True``, so a resumed run matches an uninterrupted one.

    Hooks are pickled with run checkpoints: make them instances of module-level classes.
    """


def call_loss_hooks(
    hooks: list[Any],
    model: nn.Module,
    inputs: Any,
    outputs: torch.Tensor,
    targets: torch.Tensor,
    loss: torch.Tensor,
) -> torch.Tensor:
    """Pass ``loss`` through every hook's ``loss`` method in order; return the final loss."""
    for hook in hooks:
        fn = getattr(hook, "loss", None)
        if fn is not None:
            loss = fn(model, inputs, outputs, targets, loss)
    return loss


def call_hooks(hooks: list[Any], name: str, *args: Any) -> dict[str, Any]:
    """Call method ``name`` on every hook that has it; merge the dicts they return. A key an earlier hook
    already returned is kept for both: the later hook's value goes under ``key_2`` (``key_3``, ...), so two hooks
    of one kind (two distillation terms) never overwrite each other's metrics."""
    merged: dict[str, Any] = {}
    for hook in hooks:
        fn = getattr(hook, name, None)
        if fn is not None:
            out = fn(*args)
            if isinstance(out, dict):
                for key, value in out.items():
                    slot, n = key, 1
                    while slot in merged:
                        n += 1
                        slot = f"{key}_{n}"
                    merged[slot] = value
    return merged


def hook_states(hooks: list[Any]) -> list[Any]:
    """``state_dict()`` of each hook that has one, ``None`` for the others (position kept)."""
    return [hook.state_dict() if hasattr(hook, "state_dict") else None for hook in hooks]


def load_hook_states(hooks: list[Any], states: list[Any]) -> None:
    """Give each hook back the state saved by :func:`hook_states`."""
    for hook, state in zip(hooks, states):
        if state is not None and hasattr(hook, "load_state_dict"):
            hook.load_state_dict(state)
