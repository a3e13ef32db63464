"""Choosing the rank of a truncated SVD: by energy kept or by a parameter budget.

The energy of a matrix is the sum of its squared singular values (its squared Frobenius
norm); keeping the ``r`` largest keeps ``sum(s[:r]**2) / sum(s**2)`` of it, and the relative
squared error of the rank-``r`` approximation is exactly the rest (Eckart-Young).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from netcompress.core.config import check_range


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest rank whose singular values keep at least ``energy`` (0 < energy <= 1) of the total.

    Example:
        >>> rank_for_energy(torch.tensor([3.0, 2.0, 1.0]), 0.9)  # 9 / 14 = 0.64, 13 / 14 = 0.93
        2
    """
    check_range("energy", energy, 1e-12, 1.0)
    squares = singular_values.double().pow(2)
    total = squares.sum()
    if total <= 0:
        return 1
    kept = squares.cumsum(0) / total
    # a tolerance so energy=1.0 is reached despite rounding in the cumulative sum
    return int((kept < energy - 1e-12).sum().item()) + 1


def energy_kept(singular_values: torch.Tensor, rank: int) -> float:
    """Fraction of the energy kept by the ``rank`` largest singular values.

    Example:
        >>> energy_kept(torch.tensor([3.0, 2.0, 1.0]), 1)  # 9 / 14
        0.642857...
    """
    squares = singular_values.double().pow(2)
    total = float(squares.sum())
    return float(squares[:rank].sum()) / total if total > 0 else 1.0


def rank_for_budget(params_at_rank: Callable[[int], int], *, budget_params: float, max_rank: int) -> int:
    """Largest rank (at most ``max_rank``) whose parameter count fits ``budget_params``; 0 if none.

    ``params_at_rank(r)`` is affine in ``r`` for every factorisation here (``a * r + bias``).

    Example:
        >>> rank_for_budget(lambda r: r * (64 + 32) + 32, budget_params=0.25 * (64 * 32 + 32), max_rank=32)
        5
    """
    bias = params_at_rank(0)
    per_rank = params_at_rank(1) - bias
    fit = int((budget_params - bias) // per_rank) if per_rank > 0 else max_rank
    return max(0, min(max_rank, fit))
