"""The loss ``fit`` trains with when no ``loss_fn`` is given: the task's own (``TrainConfig.loss``).

``auto`` (the default) picks it from the first batch's shapes (:mod:`netcompress.core.targets`): cross entropy
for (N, C) logits with (N,) classes, per-pixel cross entropy skipping ``ignore_index`` for (N, C, H, W) logits
with (N, H, W) class maps, BCE with logits for (N, C) logits with (N, C) 0/1 targets. A named loss (a recipe
step's ``loss: segmentation``) is kept whatever the batches hold; a batch it cannot pair is a DataError naming
both shapes. ``train_acc`` follows the task: top-1, pixel accuracy or exact match.

Example:
    >>> fit(seg_model, mask_loader, config=TrainConfig(loss="segmentation", ignore_index=-100))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from netcompress.core.targets import check_pairing, infer_task, resize_logits


class TaskLoss:
    """``loss(outputs, targets)`` of the task named (or found on the first batch, then kept).

    Example:
        >>> loss = TaskLoss("auto"); loss(torch.zeros(2, 3), torch.tensor([0, 2])); loss.task
        'cross_entropy'
    """

    def __init__(self, task: str = "auto", *, label_smoothing: float = 0.0, ignore_index: int = -100) -> None:
        self.task: str | None = None if task == "auto" else task
        self.label_smoothing, self.ignore_index = label_smoothing, ignore_index

    def __call__(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        if self.task is None:
            self.task = infer_task(outputs, targets)
        check_pairing(self.task, outputs, targets, where="fit", ignore_index=self.ignore_index)
        if self.task == "segmentation":
            logits = resize_logits(outputs, targets)
            return F.cross_entropy(
                logits, targets, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
            )
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype))
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        """``(right, counted)`` of a batch for ``train_acc`` (pixels, samples), None when it has no accuracy."""
        if self.task == "segmentation":
            keep = targets != self.ignore_index
            pred = resize_logits(outputs.detach(), targets).argmax(dim=1)
            return (pred[keep] == targets[keep]).sum(), int(keep.sum())
        if self.task == "multilabel":
            return ((outputs.detach() > 0) == targets.bool()).all(dim=1).sum(), targets.shape[0]
        if outputs.dim() == 2 and targets.dim() == 1:
            return (outputs.detach().argmax(dim=1) == targets).sum(), targets.shape[0]
        return None
