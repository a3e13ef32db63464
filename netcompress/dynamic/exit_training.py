"""Training and measuring early-exit models: the multi-exit loss and the accuracy-vs-MACs sweep.

Two ways to train an :class:`~netcompress.dynamic.early_exit.EarlyExitModel` with ``fit``:

- ``fit(model, loader, hooks=[EarlyExitHook(weights=...)])`` (what :func:`train_early_exit`
  does): the model hands ``fit`` the final logits, so ``train_acc`` is the last exit's, and
  the hook replaces the loss by the weighted sum of every exit's cross entropy; history rows
  gain ``exit<i>_train_acc``.
- ``fit(model, loader, loss_fn=MultiExitLoss(weights=...))``: the plain loss-function route;
  the model returns the list of logits, so ``fit`` cannot report ``train_acc`` (None).

Example::

    ee = add_early_exits(model, exits=["features.5"], example_inputs=x)
    history = train_early_exit(ee, train_loader, config=TrainConfig(epochs=3), weights=[0.5, 1.0])
    rows = evaluate_early_exit(ee, test_loader, criterion="confidence", thresholds=[0.5, 0.9, 1.01])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError, DataError, UnsupportedModelError
from netcompress.dynamic.early_exit import DEFAULT_THRESHOLDS, EXIT_CRITERIA, EarlyExitModel, route_exits
from netcompress.evaluation.harness import eval_mode


def _check_weights(weights: Sequence[float] | None, num_exits: int | None) -> list[float] | None:
    if weights is None:
        return None
    weights = [float(w) for w in weights]
    for w in weights:
        check_range("exit weight", w, 0.0)
    if num_exits is not None and len(weights) != num_exits:
        raise ConfigError(f"{len(weights)} exit weights for {num_exits} exits (heads + final classifier)")
    return weights


class MultiExitLoss:
    """``sum_i weights[i] * CE(exit_logits[i], targets)``; weights default to 1 for every exit.

    Usable as ``fit``'s ``loss_fn`` for a model returning the list of exit logits.

    Example:
        >>> loss = MultiExitLoss(weights=[0.3, 1.0])([logits_head, logits_final], targets)
    """

    def __init__(self, *, weights: Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        check_range("label_smoothing", label_smoothing, 0.0, 1.0)
        self.weights = _check_weights(weights, None)
        self.label_smoothing = float(label_smoothing)

    def per_exit(self, exit_logits: Sequence[torch.Tensor], targets: torch.Tensor) -> list[torch.Tensor]:
        """The unweighted cross entropy of each exit."""
        return [F.cross_entropy(lg, targets, label_smoothing=self.label_smoothing) for lg in exit_logits]

    def __call__(
        self, exit_logits: Sequence[torch.Tensor] | torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(exit_logits, torch.Tensor):
            exit_logits = [exit_logits]
        weights = self.weights or [1.0] * len(exit_logits)
        if len(weights) != len(exit_logits):
            raise ConfigError(f"{len(weights)} exit weights for {len(exit_logits)} exits")
        losses = self.per_exit(exit_logits, targets)
        return sum(w * loss for w, loss in zip(weights, losses))


class EarlyExitHook:
    """``fit`` hook training every exit: loss = weighted sum of the exits' cross entropies.

    ``epoch_start`` switches the model to hand ``fit`` its final logits (so ``train_acc`` is
    measured) and keep the others for :meth:`loss`; with ``freeze_backbone`` the backbone's
    BatchNorm layers stay in eval mode (freeze its parameters before ``fit``, as
    :func:`train_early_exit` does). ``epoch_end`` reports ``exit<i>_train_acc`` per exit.

    Example:
        >>> fit(ee, loader, hooks=[EarlyExitHook(weights=[0.5, 0.5, 1.0])], config=cfg)
    """

    def __init__(
        self,
        *,
        weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        freeze_backbone: bool = False,
    ) -> None:
        self.criterion = MultiExitLoss(weights=weights, label_smoothing=label_smoothing)
        self.freeze_backbone = bool(freeze_backbone)
        self._correct: list[int] = []
        self._seen = 0

    def epoch_start(self, model: nn.Module, epoch: int) -> None:
        _as_early_exit(model).stash_exit_logits = True
        if self.freeze_backbone:
            model.segments.eval()
        self._correct, self._seen = [0] * model.num_exits, 0

    def loss(self, model: nn.Module, inputs: Any, outputs: Any, targets: torch.Tensor, loss: torch.Tensor):
        exit_logits = _as_early_exit(model).pop_exit_logits()
        if exit_logits is None:
            raise UnsupportedModelError(
                "EarlyExitHook: the model kept no exit logits (was it in train mode?)"
            )
        for i, logits in enumerate(exit_logits):
            self._correct[i] += int((logits.detach().argmax(dim=1) == targets).sum())
        self._seen += len(targets)
        return self.criterion(exit_logits, targets)

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        _as_early_exit(model).stash_exit_logits = False
        return {f"exit{i}_train_acc": c / max(self._seen, 1) for i, c in enumerate(self._correct)}


def _as_early_exit(model: nn.Module) -> EarlyExitModel:
    if not isinstance(model, EarlyExitModel):
        raise UnsupportedModelError(
            f"expected an EarlyExitModel (from add_early_exits), got {type(model).__name__}"
        )
    return model


def train_early_exit(
    model: EarlyExitModel,
    train_loader: Iterable,
    *,
    config: Any = None,
    val_loader: Iterable | None = None,
    weights: Sequence[float] | None = None,
    freeze_backbone: bool = False,
    hooks: Sequence[Any] = (),
    checkpoint_dir: Any = None,
    resume: bool = False,
) -> Any:
    """Train ``model`` IN PLACE with the multi-exit loss through ``fit``; return the History.

    ``freeze_backbone=True`` trains only the heads (backbone parameters frozen, its BN
    statistics kept), the usual route for a pretrained model; False trains jointly.

    Example:
        >>> history = train_early_exit(ee, loader, config=TrainConfig(epochs=2), weights=[0.5, 1.0])
        >>> history.last["exit0_train_acc"], history.last["train_acc"]
    """
    from netcompress.training.loop import fit  # training area, imported when used

    model = _as_early_exit(model)
    _check_weights(weights, model.num_exits)
    label_smoothing = getattr(config, "label_smoothing", 0.0) if config is not None else 0.0
    hook = EarlyExitHook(weights=weights, label_smoothing=label_smoothing, freeze_backbone=freeze_backbone)
    frozen = [p for p in model.segments.parameters() if p.requires_grad] if freeze_backbone else []
    for p in frozen:
        p.requires_grad_(False)
    try:
        return fit(
            model,
            train_loader,
            val_loader=val_loader,
            config=config,
            hooks=[hook, *hooks],
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )
    finally:
        model.stash_exit_logits = False
        for p in frozen:
            p.requires_grad_(True)


class _ExitPath(nn.Module):
    """What a sample leaving at exit ``index`` runs: segments up to it and every head up to it."""

    def __init__(self, model: EarlyExitModel, index: int) -> None:
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = x
        for i in range(self.index + 1):
            x = self.model.segments[i](x)
            # earlier heads ran and were not confident enough: their cost is paid too
            logits = self.model.heads[i](x) if i < len(self.model.heads) else x
        return logits


def exit_path_macs(model: EarlyExitModel, example_inputs: torch.Tensor) -> list[int]:
    """MACs per sample of leaving at each exit (the segments and every head evaluated on the way).

    Example:
        >>> exit_path_macs(ee, torch.randn(1, 1, 8, 8))
        [15360, 140160, 160010]
    """
    from netcompress.evaluation import count_macs

    model = _as_early_exit(model)
    sample = example_inputs[:1]
    return [count_macs(_ExitPath(model, i), sample)[0] for i in range(model.num_exits)]


@torch.no_grad()
def collect_exit_logits(
    model: EarlyExitModel, loader: Iterable, *, device: str = "cpu", max_batches: int | None = None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every exit's logits for every sample of ``loader`` (eval mode), and the labels.

    Example:
        >>> exit_logits, labels = collect_exit_logits(ee, test_loader, max_batches=2)
    """
    model = _as_early_exit(model)
    per_exit: list[list[torch.Tensor]] = [[] for _ in range(model.num_exits)]
    labels = []
    with eval_mode(model):
        for index, (inputs, targets) in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            for bucket, logits in zip(per_exit, model.forward_all(inputs.to(device))):
                bucket.append(logits.float().cpu())
            labels.append(torch.as_tensor(targets).cpu())
    if not labels:
        raise DataError("evaluate_early_exit: the loader yielded no batches")
    return [torch.cat(b) for b in per_exit], torch.cat(labels)


def trade_off_rows(
    exit_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    exit_macs: Sequence[int],
    criterion: str,
    thresholds: Sequence[float],
) -> list[dict[str, Any]]:
    """One row per threshold: accuracy, exit shares and expected MACs per sample.

    ``expected_macs = sum_i share_i * exit_macs[i]``; ``macs_fraction`` divides it by the
    cost of the last exit (the full network plus every head).

    Example:
        >>> trade_off_rows([head_logits, final_logits], labels, exit_macs=[100, 400],
        ...                criterion="confidence", thresholds=[0.9])[0]["expected_macs"]
    """
    if len(exit_macs) != len(exit_logits):
        raise ConfigError(f"{len(exit_macs)} MAC counts for {len(exit_logits)} exits")
    count = len(labels)
    stacked = torch.stack(list(exit_logits))  # (exits, N, classes)
    rows = []
    for threshold in thresholds:
        chosen = route_exits(exit_logits, criterion=criterion, threshold=float(threshold))
        predictions = stacked[chosen, torch.arange(count)].argmax(dim=1)
        counts = torch.bincount(chosen, minlength=len(exit_logits)).tolist()
        shares = [c / count for c in counts]
        expected = sum(s * m for s, m in zip(shares, exit_macs))
        rows.append(
            {
                "criterion": criterion,
                "threshold": float(threshold),
                "accuracy": float((predictions == labels).float().mean()),
                "exit_counts": counts,
                "exit_shares": shares,
                "expected_macs": float(expected),
                "macs_fraction": float(expected / exit_macs[-1]) if exit_macs[-1] else None,
            }
        )
    return rows


def evaluate_early_exit(
    model: EarlyExitModel,
    loader: Iterable,
    *,
    criterion: str = "confidence",
    thresholds: Sequence[float] | None = None,
    example_inputs: torch.Tensor | None = None,
    device: str = "cpu",
    max_batches: int | None = None,
) -> list[dict[str, Any]]:
    """The accuracy-vs-MACs trade-off: one row per threshold (see :func:`trade_off_rows`).

    Every exit's logits are computed once; each threshold then routes them exactly as the
    model's eval forward would. Each row also carries ``exit_accuracies`` (each exit alone)
    and ``exit_macs``. ``example_inputs`` (default: the first sample of ``loader``) sizes
    the MAC count. ``thresholds`` default to :data:`DEFAULT_THRESHOLDS` of the criterion.

    Example:
        >>> rows = evaluate_early_exit(ee, test_loader, criterion="entropy", thresholds=[0.1, 0.3])
        >>> [(r["expected_macs"], r["accuracy"]) for r in rows]
    """
    check_choice("criterion", criterion, EXIT_CRITERIA.names())
    thresholds = list(DEFAULT_THRESHOLDS[criterion] if thresholds is None else thresholds)
    if not thresholds:
        raise ConfigError("thresholds is empty")
    exit_logits, labels = collect_exit_logits(model, loader, device=device, max_batches=max_batches)
    if example_inputs is None:
        example_inputs = next(iter(loader))[0][:1]
    exit_macs = exit_path_macs(model, example_inputs.to(device))
    exit_accuracies = [float((lg.argmax(dim=1) == labels).float().mean()) for lg in exit_logits]
    rows = trade_off_rows(
        exit_logits, labels, exit_macs=exit_macs, criterion=criterion, thresholds=thresholds
    )
    for row in rows:
        row.update(exit_accuracies=exit_accuracies, exit_macs=list(exit_macs), num_samples=len(labels))
    return rows
