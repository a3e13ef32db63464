"""What a batch's targets ask of the model's outputs: the task (and so the loss and the metric) of a batch.

Three tasks, chosen from the shapes of the first batch (``task="auto"``) or named (a recipe step's
``loss:`` key, ``TrainConfig.loss``):

| task | outputs | targets | loss | metric (``accuracy`` holds the first) |
| --- | --- | --- | --- | --- |
| ``cross_entropy`` | (N, C) logits | (N,) class indices (or (N, C) probabilities) | cross entropy | top-1; |
| ``segmentation`` | (N, C, H, W) logits (any number of trailing dims) | (N, H, W) class maps, ``ignore_index`` skipped | per-pixel cross entropy | pixel accuracy; mIoU |
| ``multilabel`` | (N, C) logits | (N, C) of {0, 1} | BCE with logits | exact match; per-label (macro) F1 |

Logits smaller than their class maps (SegFormer predicts at 1/4 resolution) are resized bilinearly to the
maps, as its own loss does. ``auto`` takes (N, C) targets of 0/1 for multi-label unless every row holds
exactly one 1 (one-hot: cross entropy, as before); a multi-label data set whose first batch happens to hold
one label per sample must name ``loss: multilabel``.

Example:
    >>> infer_task(torch.zeros(2, 5, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
    'segmentation'
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from netcompress.core.errors import DataError

TASKS = ("auto", "cross_entropy", "segmentation", "multilabel")
METRICS = {"cross_entropy": "top1", "segmentation": "pixel_accuracy", "multilabel": "exact_match"}
NEEDS = {
    "cross_entropy": "(batch, classes) logits with (batch,) integer class indices",
    "segmentation": "(batch, classes, H, W) logits with (batch, H, W) integer class maps",
    "multilabel": "(batch, labels) logits with (batch, labels) targets of 0/1",
}


def _binary(targets: torch.Tensor) -> bool:
    return targets.dtype == torch.bool or bool(((targets == 0) | (targets == 1)).all())


def _dense_pair(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """(N, C, *S) logits with (N, *T) integer maps, S no larger than T (resized up to it)."""
    return (
        outputs.dim() >= 3
        and targets.dim() == outputs.dim() - 1
        and targets.shape[0] == outputs.shape[0]
        and not targets.is_floating_point()
        and all(o <= t for o, t in zip(outputs.shape[2:], targets.shape[1:]))
    )


def infer_task(outputs: Any, targets: torch.Tensor) -> str:
    """The task of a batch from its shapes (see the module table); ``cross_entropy`` when nothing else fits
    (the pairing check then names the shapes)."""
    if not isinstance(outputs, torch.Tensor) or outputs.dim() < 2:
        return "cross_entropy"
    if _dense_pair(outputs, targets):
        return "segmentation"
    if outputs.dim() == 2 and tuple(targets.shape) == tuple(outputs.shape) and _binary(targets):
        one_hot = targets.is_floating_point() and bool((targets.sum(dim=1) == 1).all())
        return "cross_entropy" if one_hot else "multilabel"
    return "cross_entropy"


def _shapes(outputs: Any, targets: torch.Tensor) -> str:
    shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
    return f"the model returns {shape} and the targets are {tuple(targets.shape)} ({targets.dtype})"


def check_pairing(task: str, outputs: Any, targets: torch.Tensor, *, where: str, ignore_index: int = -100) -> None:
    """Raise a DataError naming both shapes unless ``task``'s loss can pair ``outputs`` and ``targets``."""
    if not isinstance(outputs, torch.Tensor) or outputs.dim() == 0:
        return
    shape, got = tuple(outputs.shape), tuple(targets.shape)
    if task == "cross_entropy":
        indices = (shape[0], *shape[2:]) if outputs.dim() > 1 else ()
        if (got == indices and not targets.is_floating_point()) or (got == shape and targets.is_floating_point()):
            return
        what = " (batch, tokens, vocab): a language-model head" if outputs.dim() == 3 else ""
        hint = ""
        if outputs.dim() >= 3 and targets.dim() == outputs.dim() - 1:
            hint = "; per-pixel class maps are loss: segmentation"
        elif outputs.dim() == 2 and got == shape:
            hint = "; 0/1 targets per label are loss: multilabel"
        raise DataError(
            f"{where}: the model returns {shape}{what}, but the batch's targets are {got} ({targets.dtype}); "
            f"the loss cross_entropy needs {NEEDS['cross_entropy']}{hint}. Pass unlabelled batches (inputs only, "
            "the loss from a hook such as distillation), a loss_fn(outputs, targets) for these shapes, or a "
            "wrapper model returning (batch, classes) logits"
        )
    ok = False
    if task == "segmentation":
        ok = _dense_pair(outputs, targets)
        if ok:
            bad = targets[(targets != ignore_index) & ((targets < 0) | (targets >= shape[1]))]
            if bad.numel():
                raise DataError(
                    f"{where}: the class maps hold {int(bad[0])}, outside the model's {shape[1]} classes "
                    f"(0..{shape[1] - 1}); pixels to skip must hold ignore_index={ignore_index} (ignore_index: 255 for "
                    "VOC-style masks)"
                )
    elif task == "multilabel":
        ok = outputs.dim() == 2 and got == shape and _binary(targets)
    if not ok:
        raise DataError(f"{where}: loss {task} needs {NEEDS[task]}; {_shapes(outputs, targets)}")


def resize_logits(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Segmentation logits resized (bilinear, as SegFormer's own loss) to the class maps' size when smaller."""
    size = tuple(targets.shape[1:])
    if tuple(outputs.shape[2:]) == size or outputs.dim() not in (3, 4, 5):
        return outputs
    mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[outputs.dim()]
    return F.interpolate(outputs, size=size, mode=mode, align_corners=False)
