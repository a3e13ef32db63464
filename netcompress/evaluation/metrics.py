"""Accuracy and loss of a model over a data loader (classifier, segmentation, multi-label): the one loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.config import check_choice
from netcompress.core.errors import DataError, UnsupportedModelError
from netcompress.core.inputs import call_model, move_inputs, output_tensor, split_batch
from netcompress.core.targets import METRICS, TASKS, check_pairing, infer_task, resize_logits
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


class _Tally:
    """Counts of one task over batches: ``correct``/``total`` (samples, pixels or samples for exact match),
    per-class intersection/union (segmentation), per-label TP/FP/FN (multi-label)."""

    def __init__(self, task: str, ignore_index: int) -> None:
        self.task, self.ignore_index = task, ignore_index
        self.correct = self.total = 0
        self.parts: dict[str, torch.Tensor] = {}

    def _add(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().to("cpu", torch.float64)
        old = self.parts.get(key)
        if old is not None and old.numel() < value.numel():
            old = torch.cat([old, old.new_zeros(value.numel() - old.numel())])
        elif old is not None and value.numel() < old.numel():
            value = torch.cat([value, value.new_zeros(old.numel() - value.numel())])
        self.parts[key] = value if old is None else old + value

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.task == "segmentation":
            logits = resize_logits(logits, labels)
            keep = labels != self.ignore_index
            pred, true = logits.argmax(dim=1)[keep], labels[keep]
            self.correct += int((pred == true).sum())
            self.total += int(keep.sum())
            classes = logits.shape[1]
            self._add("intersection", torch.bincount(true[pred == true], minlength=classes))
            self._add("union", torch.bincount(pred, minlength=classes) + torch.bincount(true, minlength=classes))
        elif self.task == "multilabel":
            pred, true = logits > 0, labels.bool()
            self.correct += int((pred == true).all(dim=1).sum())
            self.total += labels.shape[0]
            self._add("tp", (pred & true).sum(0))
            self._add("fp", (pred & ~true).sum(0))
            self._add("fn", (~pred & true).sum(0))
        else:  # one-hot or soft labels shaped like the logits: their largest class
            labels = labels.argmax(dim=1) if labels.shape == logits.shape else labels
            self.correct += int((logits.argmax(dim=1) == labels).sum())
            self.total += labels.shape[0]

    def extras(self) -> dict[str, Any]:
        """mIoU over the classes seen (predicted or true); macro F1 over the labels that occur or are predicted."""
        if self.task == "segmentation" and "union" in self.parts:
            inter, union = self.parts["intersection"], self.parts["union"] - self.parts["intersection"]
            seen = union > 0
            return {"miou": float((inter[seen] / union[seen]).mean()) if bool(seen.any()) else None}
        if self.task == "multilabel" and "tp" in self.parts:
            tp, fp, fn = self.parts["tp"], self.parts["fp"], self.parts["fn"]
            denominator = 2 * tp + fp + fn
            seen = denominator > 0
            f1 = (2 * tp[seen] / denominator[seen]).mean() if bool(seen.any()) else None
            return {"label_f1": None if f1 is None else float(f1)}
        return {}


def top1_counts(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    task: str = "auto",
    ignore_index: int = -100,
    task_loss: bool = False,
) -> dict[str, Any]:
    """The one accuracy loop: ``{"correct", "total", "loss_sum", "samples", "task", "metric", ...}`` over ``loader``.

    Batches are ``(inputs, labels, ...)`` or dicts holding ``labels``; inputs (a tensor, a tuple
    of tensors passed as positional arguments or a dict of keyword arguments) and labels are moved to ``device`` (None: the model's device). The
    model runs in eval mode under ``torch.no_grad``; every submodule's training flag is restored
    afterwards. ``loss_sum`` is the sample-weighted sum of ``loss_fn(logits, labels)`` (a batch
    mean), or None without ``loss_fn`` (``task_loss=True``: the task's own loss, see :func:`task_loss_fn`).
    At most ``max_batches`` batches are read. ``task`` (:mod:`netcompress.core.targets`; ``auto``: from the first batch) sets what ``correct`` / ``total``
    count: samples right (top-1), pixels right outside ``ignore_index`` (segmentation, plus ``miou``) or samples
    with every label right (multi-label, logits > 0, plus the macro ``label_f1``); ``metric`` names it.

    Example:
        >>> top1_counts(model, test_loader, max_batches=2)
        {'correct': 480, 'total': 512, 'loss_sum': None, 'samples': 512, 'task': 'cross_entropy', 'metric': 'top1'}
    """
    if max_batches is not None and max_batches < 1:
        raise DataError(f"max_batches={max_batches} must be >= 1 (or None for the whole loader)")
    check_choice("task", task, TASKS)
    target = model_device(model) if device is None else torch.device(device)
    tally: _Tally | None = None if task == "auto" else _Tally(task, ignore_index)
    samples, loss_sum = 0, 0.0
    with eval_mode(model), torch.no_grad():
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            inputs, labels = _split_batch(batch)
            labels = torch.as_tensor(labels).to(target)
            logits = _forward(model, _to_device(inputs, target))
            if tally is None:
                tally = _Tally(infer_task(logits, labels), ignore_index)
            if loss_fn is None and task_loss:
                loss_fn = task_loss_fn(tally.task, ignore_index)
            if tally.task == "cross_entropy" and (not isinstance(logits, torch.Tensor) or logits.dim() != 2):
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise UnsupportedModelError(
                    f"top-1 accuracy needs a model returning (batch, classes) logits; it returned {shape}"
                )
            check_pairing(tally.task, logits, labels, where="accuracy", ignore_index=ignore_index)
            count = labels.shape[0]
            if loss_fn is not None:
                loss_sum += float(loss_fn(logits, labels)) * count
            tally.update(logits, labels)
            samples += count
    tally = tally or _Tally("cross_entropy" if task == "auto" else task, ignore_index)
    return {
        "correct": tally.correct,
        "total": tally.total,
        "loss_sum": loss_sum if loss_fn is not None else None,
        "samples": samples,
        "task": tally.task,
        "metric": METRICS[tally.task],
        **tally.extras(),
    }


def task_loss_fn(task: str, ignore_index: int = -100) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The plain (unsmoothed) loss of ``task`` as ``fn(logits, labels)``: what evaluation reports as ``loss``."""
    if task == "segmentation":
        return lambda logits, labels: F.cross_entropy(
            resize_logits(logits, labels), labels, ignore_index=ignore_index
        )
    if task == "multilabel":
        return lambda logits, labels: F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return F.cross_entropy


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
    task: str = "auto",
    ignore_index: int = -100,
) -> dict[str, Any]:
    """Accuracy (a fraction 0..1) and mean loss of ``model`` over ``loader``.

    ``accuracy`` is top-1 for classifiers; for segmentation (``task``, ``auto``: from the first batch) it is
    pixel accuracy outside ``ignore_index``, with ``miou``; for multi-label the exact-match rate (every label
    right at logits > 0), with the macro ``label_f1``; ``accuracy_metric`` then names it.

    The loop is :func:`top1_counts`: eval mode without gradients, every submodule's training
    flag restored afterwards; batches are moved to ``device`` (None: the model's device).
    ``loss_fn(logits, labels)`` must return the *mean* loss of a batch (default: the task's loss, cross
    entropy for a classifier); the result is the sample-weighted mean over all batches.

    Example:
        >>> evaluate(model, test_loader, max_batches=2)
        {'accuracy': 0.9375, 'loss': 0.21, 'num_samples': 512}
    """
    counts = top1_counts(
        model, loader, device=device, max_batches=max_batches, loss_fn=loss_fn, task=task,
        ignore_index=ignore_index, task_loss=True,
    )  # fmt: skip
    samples = counts["samples"]
    if samples == 0 or counts["total"] == 0:
        raise DataError("evaluate: the loader yielded no samples" + (" (every pixel ignored)" if samples else ""))
    extras = {k: counts[k] for k in ("miou", "label_f1") if k in counts}
    return {
        "accuracy": counts["correct"] / counts["total"],
        "loss": counts["loss_sum"] / samples,
        "num_samples": samples,
        **({"accuracy_metric": counts["metric"], **extras} if counts["task"] != "cross_entropy" else {}),
    }
