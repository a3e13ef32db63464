"""When a sample may leave: the exit criteria (confidence, normalised entropy) and the routing rule.

- ``confidence``: exit when ``max softmax >= threshold`` (0 exits everything at the first
  head; a threshold above 1 sends everything to the last).
- ``entropy``: exit when the entropy of the softmax, divided by ``ln(num_classes)`` so that
  it lies in [0, 1] whatever the number of classes, is ``<= threshold``.

Example::

    route_exits([head_logits, final_logits], criterion="confidence", threshold=0.9)  # exit per sample
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from netcompress.core.config import check_choice
from netcompress.core.errors import ConfigError
from netcompress.core.registry import Registry

ExitCriterion = Callable[[torch.Tensor, float], torch.Tensor]

EXIT_CRITERIA: Registry[ExitCriterion] = Registry("early-exit criterion")

# Threshold grids that span the whole trade-off curve, both ends included: for confidence 0
# exits everything at the first head and 1.01 nothing; for normalised entropy the reverse.
DEFAULT_THRESHOLDS: dict[str, list[float]] = {
    "confidence": [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01],
    "entropy": [1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0],
}

# a threshold at which no sample leaves before the last exit, per criterion
NEVER_EXIT: dict[str, float] = {"confidence": 1.01, "entropy": -1.0}


def max_probability(logits: torch.Tensor) -> torch.Tensor:
    """The top softmax probability of each sample (the ``confidence`` score)."""
    return F.softmax(logits.float(), dim=1).amax(dim=1)


def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy over ``ln(num_classes)`` per sample: 0 certain, 1 uniform."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1) / math.log(logits.shape[1])


@EXIT_CRITERIA.register("confidence")
def confident_by_max_prob(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """True per sample where the top softmax probability is ``>= threshold``.

    Example:
        >>> confident_by_max_prob(torch.tensor([[4.0, 0.0], [0.1, 0.0]]), 0.9)
        tensor([ True, False])
    """
    return max_probability(logits) >= threshold


@EXIT_CRITERIA.register("entropy")
def confident_by_entropy(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """True per sample where the softmax entropy over ``ln(num_classes)`` is ``<= threshold``.

    Normalising makes one threshold mean the same for 2 or 1000 classes (1.0 = uniform).

    Example:
        >>> confident_by_entropy(torch.tensor([[8.0, 0.0], [0.0, 0.0]]), 0.1)
        tensor([ True, False])
    """
    return normalised_entropy(logits) <= threshold


def exit_scores(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """The value each criterion compares with its threshold (max probability or normalised entropy).

    Example:
        >>> exit_scores(torch.tensor([[0.0, 0.0]]), "entropy")
        tensor([1.])
    """
    check_choice("criterion", criterion, EXIT_CRITERIA.names())
    return max_probability(logits) if criterion == "confidence" else normalised_entropy(logits)


def per_exit_thresholds(threshold: float | Sequence[float], num_heads: int) -> list[float]:
    """``threshold`` as one float per head: a number is shared by every head, a sequence must
    hold exactly ``num_heads`` numbers (the final classifier has none: it always answers).

    Example:
        >>> per_exit_thresholds(0.9, 2), per_exit_thresholds([0.8, 0.95], 2)
        ([0.9, 0.9], [0.8, 0.95])
    """
    if isinstance(threshold, bool):
        raise ConfigError(f"threshold={threshold!r} must be a number or one number per exit head")
    if isinstance(threshold, (int, float)):
        return [float(threshold)] * num_heads
    values = list(threshold)
    if len(values) != num_heads or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) for v in values
    ):
        raise ConfigError(
            f"threshold={values!r}: give one number, or one number per exit head ({num_heads} heads)"
        )
    return [float(v) for v in values]


def route_exits(
    exit_logits: Sequence[torch.Tensor],
    *,
    criterion: str = "confidence",
    threshold: float | Sequence[float],
) -> torch.Tensor:
    """Index of the exit each sample takes: the first confident head, else the last exit.

    ``exit_logits`` holds one ``(N, classes)`` tensor per exit, the last being the final
    classifier (always taken by the samples no earlier head was sure of). ``threshold`` is one
    number for every head or one per head (:func:`per_exit_thresholds`).

    Example:
        >>> route_exits([torch.tensor([[5.0, 0.0], [0.0, 0.0]]), torch.zeros(2, 2)], threshold=0.9)
        tensor([0, 1])
    """
    check_choice("criterion", criterion, EXIT_CRITERIA.names())
    if not exit_logits:
        raise ConfigError("route_exits needs at least one exit's logits")
    confident = EXIT_CRITERIA.get(criterion)
    limits = per_exit_thresholds(threshold, len(exit_logits) - 1)
    rows = [confident(logits, t) for logits, t in zip(exit_logits[:-1], limits)]
    rows.append(torch.ones_like(exit_logits[-1][:, 0], dtype=torch.bool))
    # argmax returns the first maximum: the earliest confident exit
    return torch.stack(rows).to(torch.uint8).argmax(dim=0)
