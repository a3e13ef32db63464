"""Choosing the exit threshold on the validation split: an accuracy bound or an average-MAC budget.

Every exit's logits are computed once on the validation loader; every threshold at which the
routing changes (each early exit's observed scores, capped to ``max_candidates`` quantiles, plus
the "nobody exits early" end) is then routed exactly as the model's eval forward would, and

- ``max_accuracy_drop=x``: the threshold with the fewest average MACs whose accuracy is at least
  the final exit's minus ``x`` (a fraction: 0.01 = one point);
- ``max_macs_fraction=f`` / ``max_macs=m``: the most accurate threshold whose average MACs per
  sample are at most ``f`` times the full path's (or ``m``).

Use the validation split: the test split must not choose anything.

Example::

    choice = calibrate_early_exit(ee, val_loader, max_accuracy_drop=0.01)
    ee.set_policy(threshold=choice["threshold"])
    choice["macs_fraction"], choice["per_exit"][0]["share"], choice["per_exit"][0]["accuracy"]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.dynamic.early_exit import EarlyExitModel, as_early_exit
from netcompress.dynamic.exit_criteria import EXIT_CRITERIA, exit_scores, route_exits
from netcompress.dynamic.exit_evaluation import collect_exit_logits, exit_path_macs, trade_off_rows


def candidate_thresholds(
    exit_logits: Sequence[torch.Tensor], criterion: str, *, max_candidates: int = 512
) -> list[float]:
    """One threshold per distinct routing of these logits: midway between neighbouring observed
    scores (so a score that moves by rounding does not flip its sample), plus both ends.

    Example:
        >>> candidate_thresholds([torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.zeros(2, 2)], "confidence")
        [-1.0, 0.6903985142707825, 1.01]
    """
    check_choice("criterion", criterion, EXIT_CRITERIA.names())
    check_range("max_candidates", max_candidates, 2)
    scores = torch.cat([exit_scores(lg, criterion) for lg in exit_logits[:-1]]).double().unique()
    if scores.numel() > max_candidates:
        scores = torch.quantile(scores, torch.linspace(0, 1, max_candidates, dtype=torch.float64)).unique()
    middles = ((scores[1:] + scores[:-1]) / 2).tolist()
    # both scores lie in [0, 1]: -1 is below every one, 1.01 above
    return [-1.0, *middles, 1.01]


def _per_exit(chosen: torch.Tensor, correct: torch.Tensor, num_exits: int) -> list[dict[str, Any]]:
    rows = []
    for index in range(num_exits):
        here = chosen == index
        count = int(here.sum())
        rows.append(
            {
                "exit": index,
                "count": count,
                "share": count / len(chosen),
                # accuracy of the samples that left here (None where none did)
                "accuracy": float(correct[here].float().mean()) if count else None,
            }
        )
    return rows


def choose_threshold(
    exit_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    exit_macs: Sequence[int],
    criterion: str = "confidence",
    max_accuracy_drop: float | None = None,
    max_macs_fraction: float | None = None,
    max_macs: float | None = None,
    max_candidates: int = 512,
) -> dict[str, Any]:
    """The threshold meeting exactly one bound, and what it does on these samples.

    Returns the chosen trade-off row (``threshold``, ``accuracy``, ``expected_macs``,
    ``macs_fraction``, ``exit_shares``...) plus ``final_accuracy`` (the last exit alone),
    ``accuracy_drop``, ``macs_speedup`` (full-path MACs over average MACs), ``per_exit`` (share,
    count and accuracy of the samples leaving at each exit) and ``bound``.

    Example:
        >>> choose_threshold([head, final], labels, exit_macs=[100, 400], max_macs_fraction=0.5)
    """
    bounds = {
        "max_accuracy_drop": max_accuracy_drop,
        "max_macs_fraction": max_macs_fraction,
        "max_macs": max_macs,
    }
    given = {k: v for k, v in bounds.items() if v is not None}
    if len(given) != 1:
        raise ConfigError(f"give exactly one of {sorted(bounds)}; got {sorted(given) or 'none'}")
    ((bound, value),) = given.items()
    check_range(bound, value, 0.0)
    thresholds = candidate_thresholds(exit_logits, criterion, max_candidates=max_candidates)
    rows = trade_off_rows(
        exit_logits, labels, exit_macs=exit_macs, criterion=criterion, thresholds=thresholds
    )
    final_accuracy = float((exit_logits[-1].argmax(dim=1) == labels).float().mean())
    if bound == "max_accuracy_drop":
        feasible = [r for r in rows if r["accuracy"] >= final_accuracy - value - 1e-12]
        best = min(feasible, key=lambda r: (r["expected_macs"], -r["accuracy"]))
    else:
        budget = value * exit_macs[-1] if bound == "max_macs_fraction" else value
        feasible = [r for r in rows if r["expected_macs"] <= budget + 1e-9]
        if not feasible:
            cheapest = min(r["expected_macs"] for r in rows)
            raise ConfigError(
                f"{bound}={value}: no threshold gets the average MACs down to {budget:.4g}; the cheapest "
                f"routing (everything at the first exit) costs {cheapest:.4g} MACs per sample"
            )
        best = max(feasible, key=lambda r: (r["accuracy"], -r["expected_macs"]))
    chosen = route_exits(exit_logits, criterion=criterion, threshold=best["threshold"])
    stacked = torch.stack(list(exit_logits))
    correct = stacked[chosen, torch.arange(len(labels))].argmax(dim=1) == labels
    return {
        **best,
        "final_accuracy": final_accuracy,
        "accuracy_drop": final_accuracy - best["accuracy"],
        "macs_speedup": exit_macs[-1] / best["expected_macs"] if best["expected_macs"] else None,
        "per_exit": _per_exit(chosen, correct, len(exit_logits)),
        "bound": {bound: value},
        "candidates": len(thresholds),
    }


def collect_validation(
    model: EarlyExitModel,
    val_loader: Iterable,
    *,
    example_inputs: torch.Tensor | None = None,
    device: str = "cpu",
    max_batches: int | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, list[float]]:
    """``(exit_logits, labels, exit_macs)`` of ``model`` on the validation loader: what every threshold
    chooser needs (MACs counted on ``example_inputs``, default the loader's first sample)."""
    exit_logits, labels = collect_exit_logits(model, val_loader, device=device, max_batches=max_batches)
    if example_inputs is None:
        example_inputs = next(iter(val_loader))[0][:1]
    return exit_logits, labels, exit_path_macs(model, example_inputs.to(device))


def calibrate_early_exit(
    model: EarlyExitModel,
    val_loader: Iterable,
    *,
    criterion: str | None = None,
    max_accuracy_drop: float | None = None,
    max_macs_fraction: float | None = None,
    max_macs: float | None = None,
    example_inputs: torch.Tensor | None = None,
    device: str = "cpu",
    max_batches: int | None = None,
    apply: bool = True,
) -> dict[str, Any]:
    """Choose ``model``'s threshold on the VALIDATION loader (see :func:`choose_threshold`).

    ``criterion`` defaults to the model's; with ``apply`` the model's policy is set to the
    choice. Returns the choice with ``exit_names`` and ``num_samples``.

    Example:
        >>> calibrate_early_exit(ee, val_loader, max_macs_fraction=0.5)["accuracy"]
    """
    model = as_early_exit(model)
    criterion = model.criterion if criterion is None else criterion
    exit_logits, labels, exit_macs = collect_validation(
        model, val_loader, example_inputs=example_inputs, device=device, max_batches=max_batches
    )
    choice = choose_threshold(
        exit_logits,
        labels,
        exit_macs=exit_macs,
        criterion=criterion,
        max_accuracy_drop=max_accuracy_drop,
        max_macs_fraction=max_macs_fraction,
        max_macs=max_macs,
    )
    choice.update(exit_names=list(model.exit_names), exit_macs=list(exit_macs), num_samples=len(labels))
    if apply:
        model.set_policy(criterion=criterion, threshold=choice["threshold"])
    return choice
