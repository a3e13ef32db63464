"""What ``fit`` checks on each batch: how it splits and moves, whether the default loss can pair
its outputs and targets, and whether the loss is finite (a NaN/inf loss stops training)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError, DataError, NonFiniteLossError, UnsupportedModelError
from netcompress.core.inputs import input_tensors, map_inputs, split_batch
from netcompress.core.targets import check_pairing


def split_batch_to(batch: Any, device: torch.device) -> tuple[Any, torch.Tensor | None]:
    """``(inputs, targets)`` of one batch on ``device``; targets None when the batch has none.

    Inputs may be a tensor, a tuple (positional) or a dict (keyword).
    """
    try:
        inputs, targets = split_batch(batch)
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    inputs = map_inputs(inputs, lambda t: t.to(device, non_blocking=True))
    if targets is None:
        return inputs, None
    return inputs, torch.as_tensor(targets).to(device, non_blocking=True)


def check_cross_entropy_shapes(outputs: Any, targets: torch.Tensor) -> None:
    """Refuse outputs and targets the default cross entropy cannot pair, naming both shapes.

    Cross entropy takes (batch, classes, ...) logits with class indices shaped (batch, ...) or
    probabilities shaped like the logits; anything else (a causal LM's (batch, tokens, vocab) logits
    with one class label per sample) is a DataError saying what to pass instead.

    Example:
        >>> check_cross_entropy_shapes(torch.zeros(2, 8, 99), torch.zeros(2, dtype=torch.long))
        Traceback (most recent call last):
        netcompress.core.errors.DataError: fit: the model returns (2, 8, 99) ...
    """
    check_pairing("cross_entropy", outputs, targets, where="fit")


def no_target_loss(loss_hooks: list[Any], device: torch.device) -> torch.Tensor:
    """The base loss of a batch without targets: zero, the hooks add theirs (or an error if none can)."""
    if not loss_hooks:
        raise DataError(
            "a batch has no targets and no hook supplies the loss; the loader must yield (inputs, targets) "
            "pairs or dicts with 'labels' (target-less batches need a distillation hook)"
        )
    return torch.zeros((), device=device)


def num_batches(loader: Iterable) -> int:
    """Batches per epoch (the schedule needs it); a loader without len() or with none is a DataError."""
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(
            "train_loader has no len(); fit needs the number of batches per epoch for the schedule"
        ) from None
    if n == 0:
        raise DataError("train_loader is empty (0 batches per epoch)")
    return n


def check_finite_loss(
    loss: torch.Tensor,
    where: dict[str, Any],
    batch: tuple[Any, torch.Tensor | None],
    *,
    model: nn.Module,
    runtime: Any,
    directory: Path | None,
) -> None:
    """Stop training on a NaN or infinite loss, BEFORE it is back-propagated into the weights.

    ``where`` holds ``epoch``, ``epochs``, ``step``, ``steps`` (all counted from 1) and ``lr``; ``batch`` is
    the step's ``(inputs, targets)``. Under
    DDP every rank learns whether any rank's loss is not finite, so all stop together. The error says
    which it is, where, what looks like the cause (non-finite inputs or targets, weights that already
    diverged, else the loss itself: lr too high) and that the checkpoints of earlier epochs are kept.
    One device sync per step (a GPU waits for the loss); on CPU it costs nothing measurable.
    """
    bad = (~torch.isfinite(loss.detach())).any().to(torch.float32)
    if runtime is not None and runtime.distributed:
        bad = runtime.all_reduce_sum(bad.reshape(1))
    if not bool(bad.item()):
        return
    value = loss.detach().float()
    what = "nan" if bool(torch.isnan(value).any()) else "inf" if value.numel() == 1 else "not finite"
    if what == "inf" and float(value) < 0:
        what = "-inf"
    raise NonFiniteLossError(
        f"fit: the training loss is {what} at epoch {where['epoch']}/{where['epochs']}, "
        f"step {where['step']}/{where['steps']} (lr {where['lr']:.4g}); training stopped before this step "
        f"changed the weights. {_likely_cause(*batch, model)}; {_kept(directory)}"
    )


def _likely_cause(inputs: Any, targets: torch.Tensor | None, model: nn.Module) -> str:
    bad_inputs = sum(int((~torch.isfinite(t)).sum()) for t in input_tensors(inputs) if t.is_floating_point())
    if bad_inputs:
        return f"This batch's inputs hold {bad_inputs} NaN/inf value(s): clean the data"
    if targets is not None and targets.is_floating_point() and not bool(torch.isfinite(targets).all()):
        return "This batch's targets hold NaN/inf values: clean the data"
    diverged = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if diverged:
        return (
            f"The weights already diverged ({len(diverged)} parameter(s) hold NaN/inf, first "
            f"{diverged[0]!r}): lower the lr or set grad_clip_norm"
        )
    return "The inputs and weights are finite: lower the lr, set grad_clip_norm, or check the loss"


def _kept(directory: Path | None) -> str:
    if directory is None:
        return "nothing was saved"
    return f"the checkpoints in {directory} (from the last finished epoch, if any) are kept as they were"


def check_loss_has_grad(loss: torch.Tensor, where: dict[str, Any], model: nn.Module) -> None:
    """A loss that carries no gradient cannot train (``backward`` would fail with "element 0 of tensors does not
    require grad"): say why it may be so. Distillation taps on layers run inside a custom autograd.Function
    (Reformer's reversible layers compute their hidden states under ``no_grad``) are one such case."""
    if loss.requires_grad:
        return
    raise UnsupportedModelError(
        f"fit: the training loss at epoch {where['epoch']}/{where['epochs']}, step {where['step']}/{where['steps']} "
        f"carries no gradient, so it cannot train {type(model).__name__}: it was computed from tensors with no "
        "gradient (outputs or tapped layers computed under torch.no_grad or inside a custom torch.autograd.Function, "
        "as Reformer's reversible layers are); nothing was changed by this step"
    )
