"""``fit``: the one training loop every method trains through.

Read top to bottom it is the loop you would write by hand (forward, loss, backward, step),
with the seams a compression method needs: hooks (penalties, gradient edits, mask keeping,
per-epoch metrics), extra trainable parameters (learned quantizer step sizes, projection
heads), per-batch schedules, best-epoch keeping, and resumable checkpoints. A NaN/inf loss stops
training before it reaches the weights (:func:`~netcompress.training.batch_checks.check_finite_loss`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError, DataError
from netcompress.core.inputs import batch_size_of, call_model, output_tensor
from netcompress.core.model_check import call_or_explain, check_loader, check_model
from netcompress.core.targets import METRICS
from netcompress.evaluation.metrics import evaluate
from netcompress.training import checkpointing as ckpt
from netcompress.training import distributed as dist_mod
from netcompress.training.batch_checks import (
    check_cross_entropy_shapes,
    check_finite_loss,
    check_loss_has_grad,
    no_target_loss,
    num_batches,
    split_batch_to,
)
from netcompress.training.config import TrainConfig
from netcompress.training.history import History
from netcompress.training.hooks import CORE_ROW_KEYS, call_hooks, call_loss_hooks
from netcompress.training.optimizers import build_optimizer, trainable_parameters
from netcompress.training.progress import SilentReporter, make_reporter
from netcompress.training.run_state import Run, as_config, load_resume_state, resume_run, save_last
from netcompress.training.runtime import Runtime, seed_everything
from netcompress.training.schedules import LRSchedule
from netcompress.training.task_losses import TaskLoss

__all__ = ["check_cross_entropy_shapes", "fit"]  # the shape check stays importable from here

BATCH = "fit: train_loader's first batch: inputs"
LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


def fit(
    model: nn.Module,
    train_loader: Iterable,
    *,
    val_loader: Iterable | None = None,
    config: TrainConfig | dict[str, Any] | None = None,
    hooks: Sequence[Any] = (),
    extra_parameters: Iterable[nn.Parameter] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    loss_fn: LossFn | None = None,
    runtime: Runtime | None = None,
) -> History:
    """Train ``model`` IN PLACE on ``(inputs, targets)`` batches; return the per-epoch :class:`History`.

    - ``config`` (:class:`TrainConfig` or a dict of its fields): optimiser, schedule, epochs, seed...
      Fit starts with ``seed_everything(config.seed)``; for repeatable shuffles give the loader
      its own seeded generator (see :mod:`netcompress.training.runtime`).
    - ``loss_fn(outputs, targets)``: default the task's loss, ``config.loss`` (``auto``: from the first
      batch: cross entropy with ``config.label_smoothing`` for (N, C) logits with (N,) classes, per-pixel
      cross entropy skipping ``config.ignore_index`` for (N, C, H, W) logits with (N, H, W) class maps, BCE
      with logits for (N, C) 0/1 targets; :mod:`netcompress.training.task_losses`). A model returning a
      tuple is trained on its first item (a dict: ``logits``). ``train_acc``/``val_acc`` are then top-1,
      pixel accuracy or exact match, and rows name the latter two (``acc_metric``).
      ``train_loss`` in the history is the loss that was back-propagated (after loss hooks).
    - ``hooks``: objects with any of the methods of :class:`netcompress.training.hooks.TrainingHook`.
    - ``extra_parameters``: trained along with the model's own parameters (and checkpointed).
    - ``val_loader``: evaluated after every epoch (``val_loss`` is the task's plain loss, unsmoothed);
      with ``config.keep_best`` the weights of the best ``val_acc`` epoch (earliest on ties) are
      put back at the end and ``history.best_epoch`` names it.
    - ``checkpoint_dir``: ``last.pt``, ``best.pt`` and ``history.json`` written atomically every
      epoch; ``resume=True`` continues from ``last.pt`` (or starts fresh if there is none) and
      ends with the same weights and history as an uninterrupted run.
    - ``runtime``: device and process group (default :meth:`Runtime.from_env`: under ``torchrun`` the
      model trains in DDP, each rank reads its share of the loader, metrics are summed over ranks and
      the hooks' ``epoch_end`` metrics averaged over ranks by samples, so every rank holds one history).
    - ``config.precision`` (``bf16``/``fp16`` autocast) and ``config.channels_last``: faster on GPUs.

    Example:
        >>> history = fit(model, train_loader, val_loader=test_loader,
        ...               config=TrainConfig(epochs=3, lr=0.05, schedule="cosine", progress=False))
        >>> history.last["val_acc"], history.best_epoch
    """
    check_model(model, where="fit")
    check_loader(train_loader, where="fit", argument="train_loader")
    check_loader(val_loader, where="fit", argument="val_loader")
    config = as_config(config)
    hooks, extra = list(hooks), list(extra_parameters)
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and directory is None:
        raise ConfigError("resume=True needs checkpoint_dir (the folder holding last.pt)")
    runtime = runtime or Runtime.from_env(device=config.device)
    device = torch.device(runtime.device)
    # under torchrun each rank reads its share (DistributedSampler); the global batch is unchanged
    train_loader = runtime.train_loader(train_loader, seed=config.seed)
    steps_per_epoch = num_batches(train_loader)

    seed_everything(config.seed)
    was_training = model.training
    model.to(device)
    with torch.no_grad():
        for p in extra:
            p.data = p.data.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    # surgery happens on ``model``; the DDP wrapper lives only for this fit call
    net = runtime.wrap_model(model, find_unused_parameters=config.find_unused_parameters)
    params = trainable_parameters(model, extra)
    if not params:
        raise ConfigError("fit: the model has no parameter with requires_grad=True and no extra_parameters")
    optimizer = build_optimizer(params, config)
    schedule = LRSchedule(optimizer, config, steps_per_epoch=steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    run = Run(config, model, extra, optimizer, schedule, hooks, train_loader, scaler)
    history, best = run.history, run.best
    criterion = loss_fn or TaskLoss(
        config.loss, label_smoothing=config.label_smoothing, ignore_index=config.ignore_index
    )
    start_epoch, saved = 0, None
    if resume and (directory / ckpt.LAST_FILE).exists():
        saved = load_resume_state(directory, run)
    saved = runtime.broadcast_object(saved)  # rank 0 decides for every rank whether and where to resume
    if saved is not None:
        start_epoch = resume_run(run, saved)

    reporter = make_reporter(progress=config.progress and runtime.is_main)
    try:
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            model.train()
            dist_mod.set_epoch(run.loader, epoch)
            call_hooks(hooks, "epoch_start", model, epoch)
            reporter.epoch_start(epoch, config.epochs, steps_per_epoch)
            train, local_samples = _train_one_epoch(
                run, net, criterion, params, device, reporter, runtime, epoch=epoch, directory=directory
            )
            val_acc, val_loss = (
                (None, None) if val_loader is None else _validate(model, val_loader, device, runtime, criterion)
            )
            row = {"epoch": epoch, **train, "val_loss": val_loss, "val_acc": val_acc}
            if isinstance(criterion, TaskLoss) and criterion.task not in (None, "cross_entropy"):
                row["acc_metric"] = METRICS[criterion.task]  # pixel_accuracy / exact_match, not top-1
            row["time_s"] = round(time.perf_counter() - started, 4)
            # a hook sees only this rank's batches: its metrics are averaged over ranks, by samples
            row.update(runtime.reduce_metrics(_hook_metrics(hooks, model, epoch), weight=local_samples))
            history.append(row)
            if val_acc is not None and val_acc > best["val_acc"]:
                best.update(epoch=epoch, val_acc=val_acc, weights=ckpt.weights_snapshot(model, extra))
                history.best_epoch = epoch
                if directory is not None and runtime.is_main:
                    ckpt.save_best(directory, best["weights"], epoch=epoch, val_acc=val_acc)
            if directory is not None and runtime.is_main:
                save_last(directory, run)
            reporter.epoch_end(row, config.epochs)
    finally:
        reporter.close()

    if config.keep_best and best["weights"] is not None:
        ckpt.load_weights(model, extra, best["weights"])
    runtime.sync_model(model, where="end of fit")  # rank 0's buffers (BN statistics) everywhere, checked
    model.train(was_training)
    return history


def _train_one_epoch(
    run: Run,
    net: nn.Module,
    criterion: LossFn,
    params: list[nn.Parameter],
    device: torch.device,
    reporter: SilentReporter,
    runtime: Runtime,
    *,
    epoch: int,
    directory: Path | None,
) -> tuple[dict[str, Any], int]:
    """One pass over this rank's batches: the epoch's row (summed over ranks) and this rank's samples."""
    model, optimizer, schedule, hooks = run.model, run.optimizer, run.schedule, run.hooks
    precision, channels_last = run.config.precision, run.config.channels_last
    clip_norm = run.config.grad_clip_norm
    # Hook methods are looked up once per epoch, not once per batch.
    loss_hooks = [h for h in hooks if hasattr(h, "loss")]
    after_backward = [h.after_backward for h in hooks if hasattr(h, "after_backward")]
    after_step = [h.after_step for h in hooks if hasattr(h, "after_step")]
    # Sums stay on the device: reading them every batch would force a sync.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen, counted, first_lr = 0, 0, None
    steps = len(run.loader)  # type: ignore[arg-type]
    for step, batch in enumerate(run.loader, start=1):
        inputs, targets = split_batch_to(batch, device)
        lr = schedule.apply()
        first_lr = lr if first_lr is None else first_lr
        if channels_last and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with dist_mod.autocast(device, precision):
            # the first batch a model cannot take is one error naming the inputs (nothing trained yet)
            outputs = call_model(net, inputs) if run.called else call_or_explain(net, inputs, where=BATCH)
            run.called = True
            # HF ModelOutput; under the task's own loss also a tuple whose first item is the logits (MONAI's ViT
            # returns (logits, hidden states), TabNet (logits, sparsity loss)); a user's loss_fn gets the tuple
            if isinstance(outputs, Mapping) or (isinstance(criterion, TaskLoss) and isinstance(outputs, (tuple, list))):
                outputs = output_tensor(outputs)
            # no targets (unlabelled text): the loss comes from the hooks alone
            loss = criterion(outputs, targets) if targets is not None else no_target_loss(loss_hooks, device)
            if loss_hooks:
                loss = call_loss_hooks(loss_hooks, model, inputs, outputs, targets, loss)
        where = {"epoch": epoch + 1, "epochs": run.config.epochs, "step": step, "steps": steps, "lr": lr}
        check_finite_loss(loss, where, (inputs, targets), model=model, runtime=runtime, directory=directory)
        check_loss_has_grad(loss, where, model)
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(optimizer)  # hooks and clipping see true gradients (no-op without fp16)
        if runtime.distributed and run.extra:
            dist_mod.average_gradients(run.extra)  # DDP averages only the model's own parameters
        for fn in after_backward:
            fn(model)
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        run.scaler.step(optimizer)
        run.scaler.update()
        schedule.advance()
        for fn in after_step:
            fn(model)

        n = batch_size_of(inputs)
        seen += n
        loss_sum += loss.detach() * n
        right = _correct(criterion, outputs, targets)
        if right is not None:
            correct += right[0]
            counted += right[1]
        reporter.batch(loss_sum, correct, seen, counted)
    local_seen = seen
    if runtime.distributed:  # sums and counts over every rank, never an average of averages
        totals = torch.stack([loss_sum.double(), correct.double()]).to(device)
        counts = torch.tensor([seen, counted], dtype=torch.float64, device=device)
        reduced = runtime.all_reduce_sum(torch.cat([totals, counts])).tolist()
        loss_sum, correct = torch.tensor(reduced[0]), torch.tensor(int(reduced[1]))
        seen, counted = int(reduced[2]), int(reduced[3])
    if seen == 0:
        raise DataError("train_loader yielded no batches")
    row = {
        "lr": first_lr,
        "train_loss": float(loss_sum) / seen,
        # None when the outputs are not (N, classes) logits with integer targets
        "train_acc": int(correct) / counted if counted else None,
    }
    return row, local_seen


def _correct(criterion: Any, outputs: Any, targets: torch.Tensor | None) -> tuple[torch.Tensor, int] | None:
    """``(right, counted)`` for ``train_acc``: the task's (top-1, pixels, exact match), or top-1 under a
    ``loss_fn`` of the user's for (N, classes) logits with (N,) labels."""
    if targets is None or not isinstance(outputs, torch.Tensor):
        return None
    if isinstance(criterion, TaskLoss):
        return criterion.correct(outputs, targets)
    if outputs.dim() == 2 and targets.dim() == 1:
        return (outputs.detach().argmax(dim=1) == targets).sum(), targets.shape[0]
    return None


def _validate(
    model: nn.Module, loader: Iterable, device: torch.device, runtime: Runtime | None = None, criterion: Any = None
) -> tuple[float, float]:
    """Validation accuracy and loss; a task the training batches chose (segmentation, multi-label) is kept."""
    task = criterion.task if isinstance(criterion, TaskLoss) and criterion.task else "auto"
    ignore = criterion.ignore_index if isinstance(criterion, TaskLoss) else -100
    if (
        runtime is not None and runtime.distributed
    ):  # rank 0's buffers, then each rank a share of the batches, counts summed
        runtime.sync_model(model, where="validation")
        result = dist_mod.evaluate_sharded(model, loader, device=device)
        return float(result["accuracy"]), float(result["loss"])
    result = evaluate(model, loader, device=str(device), task=task, ignore_index=ignore)
    return float(result["accuracy"]), float(result["loss"])


def _hook_metrics(hooks: list[Any], model: nn.Module, epoch: int) -> dict[str, Any]:
    metrics = call_hooks(hooks, "epoch_end", model, epoch)
    clash = [k for k in metrics if k in CORE_ROW_KEYS]
    if clash:
        raise ConfigError(f"a hook's epoch_end returned {clash}, which fit writes itself; rename the key")
    return {k: _plain(v) for k, v in metrics.items()}


def _plain(value: Any) -> Any:
    # history rows go to JSON: tensors and NumPy scalars become Python numbers/lists
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    return value
