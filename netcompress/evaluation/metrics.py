"""Accuracy and loss of a classifier over a data loader."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import DataError, UnsupportedModelError
from netcompress.evaluation.harness import eval_mode


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError(
        f"evaluate expects batches of (inputs, labels); got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: str | torch.device = "cpu",
    max_batches: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy (a fraction 0..1) and mean loss of ``model`` over ``loader``.

    The model runs in eval mode without gradients; every submodule's training flag is
    restored afterwards. Batches are moved to ``device``; the model is used where it is.
    ``loss_fn(logits, labels)`` must return the *mean* loss of a batch (default: cross
    entropy); the result is the sample-weighted mean over all batches.

    Example:
        >>> evaluate(model, test_loader, max_batches=2)
        {'accuracy': 0.9375, 'loss': 0.21, 'num_samples': 512}
    """
    if max_batches is not None and max_batches < 1:
        raise DataError(f"max_batches={max_batches} must be >= 1 (or None for the whole loader)")
    loss_fn = loss_fn or F.cross_entropy
    correct = 0
    total = 0
    loss_sum = 0.0
    with eval_mode(model), torch.no_grad():
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            inputs, labels = _split_batch(batch)
            inputs = inputs.to(device) if isinstance(inputs, torch.Tensor) else inputs
            labels = labels.to(device)
            logits = model(inputs)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise UnsupportedModelError(
                    f"evaluate needs a model returning (batch, classes) logits; it returned {shape}"
                )
            count = labels.shape[0]
            loss_sum += float(loss_fn(logits, labels)) * count
            correct += int((logits.argmax(dim=1) == labels).sum())
            total += count
    if total == 0:
        raise DataError("evaluate: the loader yielded no samples")
    return {"accuracy": correct / total, "loss": loss_sum / total, "num_samples": total}
