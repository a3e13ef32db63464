"""Accuracy and loss of a classifier over a data loader: the one top-1 loop of the package."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import DataError, UnsupportedModelError
from netcompress.core.inputs import call_model, move_inputs, output_tensor, split_batch
from netcompress.evaluation.harness import eval_mode, model_device


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """``(inputs, labels)`` of ``(inputs, labels, ...)`` or a dict with ``labels`` (see ``core.inputs``)."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    inputs, labels = split_batch(batch) if isinstance(batch, Mapping) else (batch, None)
    if labels is None:
        raise DataError(
            f"top-1 accuracy expects batches of (inputs, labels) or a dict with 'labels'; got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    return inputs, labels


def _to_device(inputs: Any, device: torch.device) -> Any:
    return move_inputs(inputs, device)


def _forward(model: Callable[..., Any], inputs: Any) -> Any:
    # a tuple/list of tensors is positional inputs, a dict keyword inputs; HF outputs give .logits
    out = call_model(model, inputs)
    return out if isinstance(out, torch.Tensor) else output_tensor(out)


def top1_counts(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The one top-1 loop: ``{"correct", "total", "loss_sum"}`` of ``model`` over ``loader``.

    Batches are ``(inputs, labels, ...)`` or dicts holding ``labels``; inputs (a tensor, a tuple
    of tensors passed as positional arguments or a dict of keyword arguments) and labels are moved to ``device`` (None: the model's device). The
    model runs in eval mode under ``torch.no_grad``; every submodule's training flag is restored
    afterwards. ``loss_sum`` is the sample-weighted sum of ``loss_fn(logits, labels)`` (a batch
    mean), or None without ``loss_fn``. At most ``max_batches`` batches are read.

    Example:
        >>> top1_counts(model, test_loader, max_batches=2)
        {'correct': 480, 'total': 512, 'loss_sum': None}
    """
    if max_batches is not None and max_batches < 1:
        raise DataError(f"max_batches={max_batches} must be >= 1 (or None for the whole loader)")
    target = model_device(model) if device is None else torch.device(device)
    correct = total = 0
    loss_sum = 0.0
    with eval_mode(model), torch.no_grad():
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            inputs, labels = _split_batch(batch)
            labels = torch.as_tensor(labels).to(target)
            logits = _forward(model, _to_device(inputs, target))
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise UnsupportedModelError(
                    f"top-1 accuracy needs a model returning (batch, classes) logits; it returned {shape}"
                )
            count = labels.shape[0]
            if loss_fn is not None:
                loss_sum += float(loss_fn(logits, labels)) * count
            correct += int((logits.argmax(dim=1) == labels).sum())
            total += count
    return {"correct": correct, "total": total, "loss_sum": loss_sum if loss_fn is not None else None}


def top1_accuracy(
    model: nn.Module,
    loader: Iterable[Any] | None,
    *,
    max_batches: int | None = None,
    device: str | torch.device | None = None,
) -> float | None:
    """Top-1 accuracy (0..1) on the first ``max_batches`` batches of ``loader``, by :func:`top1_counts`.

    None without a loader or when it yields no sample (callers decide whether that is an error).

    Example:
        >>> top1_accuracy(model, val_loader, max_batches=4)
        0.9296875
    """
    if loader is None:
        return None
    counts = top1_counts(model, loader, device=device, max_batches=max_batches)
    return counts["correct"] / counts["total"] if counts["total"] else None


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy (a fraction 0..1) and mean loss of ``model`` over ``loader``.

    The loop is :func:`top1_counts`: eval mode without gradients, every submodule's training
    flag restored afterwards; batches are moved to ``device`` (None: the model's device).
    ``loss_fn(logits, labels)`` must return the *mean* loss of a batch (default: cross
    entropy); the result is the sample-weighted mean over all batches.

    Example:
        >>> evaluate(model, test_loader, max_batches=2)
        {'accuracy': 0.9375, 'loss': 0.21, 'num_samples': 512}
    """
    counts = top1_counts(
        model, loader, device=device, max_batches=max_batches, loss_fn=loss_fn or F.cross_entropy
    )
    total = counts["total"]
    if total == 0:
        raise DataError("evaluate: the loader yielded no samples")
    return {"accuracy": counts["correct"] / total, "loss": counts["loss_sum"] / total, "num_samples": total}
