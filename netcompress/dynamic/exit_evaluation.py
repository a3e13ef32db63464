"""Measuring early-exit models: MACs per exit path and the accuracy-vs-expected-MACs sweep.

Every exit's logits are computed once; each threshold then routes them exactly as the model's
eval forward would (:func:`~netcompress.dynamic.early_exit.route_exits`).

Example::

    rows = evaluate_early_exit(ee, val_loader, criterion="confidence", thresholds=[0.5, 0.9, 1.01])
    [(r["expected_macs"], r["accuracy"]) for r in rows]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from netcompress.core.config import check_choice
from netcompress.core.errors import ConfigError, DataError
from netcompress.dynamic.early_exit import EarlyExitModel, as_early_exit
from netcompress.dynamic.exit_criteria import DEFAULT_THRESHOLDS, EXIT_CRITERIA, route_exits
from netcompress.evaluation.harness import eval_mode


class _ExitPath(nn.Module):
    """What a sample leaving at exit ``index`` runs: segments up to it and every head up to it."""

    def __init__(self, model: EarlyExitModel, index: int) -> None:
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, state, carry = x, (x,), ()
        for i in range(self.index + 1):
            # earlier heads ran and were not confident enough: their cost is paid too
            logits, _, state, carry = self.model.step(i, state, carry)
        return logits


def exit_path_macs(model: EarlyExitModel, example_inputs: torch.Tensor) -> list[int]:
    """MACs per sample of leaving at each exit (the segments and every head evaluated on the way).

    Example:
        >>> exit_path_macs(ee, torch.randn(1, 1, 8, 8))
        [15360, 140160, 160010]
    """
    from netcompress.evaluation import count_macs

    model = as_early_exit(model)
    sample = example_inputs[:1]
    return [count_macs(_ExitPath(model, i), sample)[0] for i in range(model.num_exits)]


@torch.no_grad()
def collect_exit_logits(
    model: EarlyExitModel,
    loader: Iterable,
    *,
    device: str = "cpu",
    max_batches: int | None = None,
    raw: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every exit's logits for every sample of ``loader`` (eval mode), and the labels: the logits each
    exit decides by (an exit ensemble's, when the model has one), or with ``raw`` the heads' own.

    Example:
        >>> exit_logits, labels = collect_exit_logits(ee, test_loader, max_batches=2)
    """
    model = as_early_exit(model)
    per_exit: list[list[torch.Tensor]] = [[] for _ in range(model.num_exits)]
    labels = []
    with eval_mode(model):
        for index, (inputs, targets) in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            for bucket, logits in zip(per_exit, model.forward_all(inputs.to(device), raw=raw)):
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
    thresholds: Sequence[float | Sequence[float]],
) -> list[dict[str, Any]]:
    """One row per threshold (a number, or one number per head): accuracy, exit shares and
    expected MACs per sample.

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
        limit = [float(t) for t in threshold] if isinstance(threshold, (list, tuple)) else float(threshold)
        chosen = route_exits(exit_logits, criterion=criterion, threshold=limit)
        predictions = stacked[chosen, torch.arange(count)].argmax(dim=1)
        counts = torch.bincount(chosen, minlength=len(exit_logits)).tolist()
        shares = [c / count for c in counts]
        expected = sum(s * m for s, m in zip(shares, exit_macs))
        rows.append(
            {
                "criterion": criterion,
                "threshold": limit,
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
