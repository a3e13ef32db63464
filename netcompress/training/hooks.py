"""The hook seam of the training loop: regularisers, mask keepers and loggers plug in here.

A hook implements any subset of these methods; :func:`netcompress.training.fit` calls them
at fixed points, so a method (the BN L1 penalty of network slimming, pruning masks kept at
zero during fine-tuning, a distillation loss) needs no loop of its own.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class TrainingHook(Protocol):
    """Every method is optional; the loop checks with ``hasattr``.

    - ``loss(model, inputs, outputs, targets, loss) -> Tensor``: return a replacement loss
      (e.g. add a penalty, or a distillation term). Called before ``backward``.
    - ``after_backward(model)``: edit gradients (e.g. add ``lambda * sign(gamma)``).
    - ``after_step(model)``: after ``optimizer.step()`` (e.g. re-apply pruning masks).
    - ``epoch_start(model, epoch)`` / ``epoch_end(model, epoch) -> dict``: the dict returned
      by ``epoch_end`` is merged into that epoch's history row (e.g. BN sparsity).
    """


def call_loss_hooks(
    hooks: list[Any],
    model: nn.Module,
    inputs: Any,
    outputs: torch.Tensor,
    targets: torch.Tensor,
    loss: torch.Tensor,
) -> torch.Tensor:
    for hook in hooks:
        fn = getattr(hook, "loss", None)
        if fn is not None:
            loss = fn(model, inputs, outputs, targets, loss)
    return loss


def call_hooks(hooks: list[Any], name: str, *args: Any) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for hook in hooks:
        fn = getattr(hook, name, None)
        if fn is not None:
            out = fn(*args)
            if isinstance(out, dict):
                merged.update(out)
    return merged
