"""BatchNorm recalibration: re-estimate running statistics after structured pruning.

Removing channels changes what every later BatchNorm sees, but its ``running_mean`` /
``running_var`` still describe the unpruned network, so a pruned VGG scores at chance (10 %)
before fine-tuning. Re-estimating the statistics on a few training batches, with no weight
changed, recovers much of the accuracy for free (narrow VGG at 3.5x fewer MACs: 10 % -> 33 %
on 10 batches) and gives fine-tuning a better start.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netcompress.core.config import check_range
from netcompress.core.errors import DataError
from netcompress.core.inputs import batch_inputs, batch_size_of, call_model
from netcompress.evaluation.metrics import top1_accuracy

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def _batch_inputs(batch: Any) -> Any:
    """The model inputs of one loader batch (a tensor, tuple or dict; see ``core.inputs``)."""
    return batch_inputs(batch)


def recalibrate_bn(model: nn.Module, loader: Any, *, num_batches: int = 10) -> dict[str, Any]:
    """Re-estimate every BatchNorm's running statistics on ``num_batches`` batches of ``loader`` (in place).

    Running statistics are reset and, for the pass only, ``momentum=None`` makes them the cumulative
    average over the batches fed (every batch weighs the same, unlike the default exponential
    average). The forward runs in train mode under ``no_grad``: no weight or gradient changes;
    each module's momentum and training flag are restored afterwards. Dropout is active during
    the pass but only affects the statistics of layers after it.

    Returns a JSON-able summary: BatchNorm layers recalibrated, batches and samples seen.

    Example:
        >>> summary = recalibrate_bn(small_model, train_loader, num_batches=10)
        >>> summary["bn_layers"], summary["batches"]
        (8, 10)
    """
    check_range("num_batches", num_batches, 1)
    norms = [m for m in model.modules() if isinstance(m, _BN_TYPES)]
    summary: dict[str, Any] = {"bn_layers": len(norms), "batches": 0, "samples": 0}
    if not norms:
        return summary
    if any(not m.track_running_stats for m in norms):
        names = [
            n for n, m in model.named_modules() if isinstance(m, _BN_TYPES) and not m.track_running_stats
        ]
        raise DataError(f"BatchNorm layers without running statistics cannot be recalibrated: {names}")
    training = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    # kept so that a loader with no batches leaves the model as it was, not with zeroed statistics
    saved = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms}
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            for index, batch in enumerate(loader):
                if index >= num_batches:
                    break
                inputs = _batch_inputs(batch)
                call_model(model, inputs)
                summary["batches"] += 1
                summary["samples"] += batch_size_of(inputs)
    finally:
        for m, flag in training.items():
            m.training = flag
        for m, momentum in momenta.items():
            m.momentum = momentum
    if summary["batches"] == 0:
        with torch.no_grad():
            for m, (mean, var, count) in saved.items():
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        raise DataError("recalibrate_bn: the loader yielded no batches; statistics left unchanged")
    return summary


def top1_on_batches(model: nn.Module, loader: Any, max_batches: int) -> float | None:
    """Top-1 accuracy of ``model`` on the first ``max_batches`` batches of ``loader`` (None without a
    loader or when it yields no batch)."""
    return top1_accuracy(model, loader, max_batches=max_batches)


def recalibrate_after_pruning(
    model: nn.Module, *, train_loader: Any, val_loader: Any = None, num_batches: int = 10
) -> dict[str, Any]:
    """:func:`recalibrate_bn` for the pruning steps, with the accuracy on ``num_batches`` validation batches
    before and after (in place; ``num_batches=0`` does nothing and says so).

    Why the accuracy: it shows in ``metrics.json`` how much of a pruned model's loss was only stale
    statistics (narrow VGG at 3.5x fewer MACs: chance before, a third right after).

    Example:
        >>> recalibrate_after_pruning(small, train_loader=train, val_loader=val, num_batches=10)
        {'bn_layers': 7, 'batches': 10, 'samples': 1280, 'accuracy_stale_bn': 0.1, 'accuracy_recalibrated': 0.33}
    """
    check_range("num_batches", num_batches, 0)
    if num_batches == 0:
        return {"batches": 0, "skipped": "recalibrate_bn_batches=0"}
    if train_loader is None:
        raise DataError("BatchNorm recalibration needs the training loader; set recalibrate_bn_batches=0")
    before = top1_on_batches(model, val_loader, num_batches)
    summary = recalibrate_bn(model, train_loader, num_batches=num_batches)
    after = top1_on_batches(model, val_loader, num_batches)
    return {**summary, "accuracy_stale_bn": before, "accuracy_recalibrated": after}
