"""SparseGPT's layer solver: prune a weight matrix and update the surviving weights (Frantar & Alistarh 2023).

For a layer ``y = W x`` with calibration inputs ``X`` (rows), the pruned weights should keep ``X W^T``:
minimise ``||X W^T - X W'^T||^2`` with ``W'`` sparse. With ``H = X^T X + damp * mean(diag) * I``, removing
weight ``w_q`` of a row and moving the others by ``-w_q / [H^-1]_qq * H^-1_{:,q}`` is the optimal
(Optimal Brain Surgeon) correction. SparseGPT visits the columns in order and, from the upper Cholesky
factor of ``H^-1``, applies each column's correction to the columns after it: exactly inside a block
of ``block_size`` columns, lazily (one matrix product per block) to the columns beyond. The weights to
prune are chosen per block by ``w^2 / [H^-1]_qq^2`` (adaptive mask selection): the ``amount`` share
of the block (unstructured), or the N lowest of every M consecutive columns (N:M).

Example:
    >>> result = sparsegpt_prune(layer.weight.reshape(out, -1), stats.hessian, amount=0.5)
    >>> result.weight, result.keep, result.error
"""

from __future__ import annotations

import dataclasses

import torch

from netcompress.core.errors import ConfigError


@dataclasses.dataclass
class SparseGPTResult:
    """The updated weight matrix, its keep-mask, and the relative output error on the calibration data.

    ``error`` = ||X (W' - W)^T||_F / ||X W^T||_F, computed from ``H = X^T X`` (no second pass).
    """

    weight: torch.Tensor
    keep: torch.Tensor
    error: float


def _inverse_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``."""
    h = hessian.clone()
    diagonal = torch.arange(len(h), device=h.device)
    h[diagonal, diagonal] += damp * float(h.diagonal().mean()) + 1e-12
    try:
        lower = torch.linalg.cholesky(h)
        return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
    except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise ConfigError(
            f"prune/sparsegpt: the inputs' Hessian is not positive definite with damp={damp}; "
            "raise damp (e.g. 0.1) or give more calibration data (calib_batches)"
        ) from None


def _block_counts(rows: int, cols: int, block_size: int, amount: float) -> list[int]:
    """Weights to prune in each block of columns: round(amount * rows * cols) in all, spread by size."""
    counts, done = [], 0
    for start in range(0, cols, block_size):
        stop = min(start + block_size, cols)
        total = int(round(amount * rows * stop))
        counts.append(total - done)
        done = total
    return counts


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    amount: float | None = None,
    n: int | None = None,
    m: int | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    keep: torch.Tensor | None = None,
) -> SparseGPTResult:
    """Prune the (out, in) matrix ``weight`` to ``amount`` sparsity (or N:M) with OBS weight updates.

    ``hessian`` is ``X^T X`` of the layer's input rows (in, in). ``keep`` (optional, same shape as
    ``weight``) is an existing mask: weights it drops are pruned first and stay pruned. For N:M,
    ``block_size`` is rounded down to a multiple of ``m`` (at least ``m``).

    Example:
        >>> result = sparsegpt_prune(w, x.T @ x, n=2, m=4)
        >>> result.keep.reshape(-1, 4).sum(1).unique().tolist()
        [2]
    """
    dtype = weight.dtype
    w = weight.detach().to(torch.float64).clone(memory_format=torch.contiguous_format)
    original = w.clone()
    h = hessian.to(device=w.device, dtype=torch.float64)
    rows, cols = w.shape
    dead = h.diagonal() == 0  # inputs that were always zero: their weights never matter
    h_used = h.clone()
    h_used[dead, dead] = 1.0
    w[:, dead] = 0.0
    h_inv = _inverse_cholesky(h_used, damp)
    pattern = n is not None and m is not None
    if pattern:
        block_size = max(m, block_size - block_size % m)
    counts = None if pattern else _block_counts(rows, cols, block_size, float(amount or 0.0))
    old = torch.ones_like(w, dtype=torch.bool) if keep is None else keep.to(w.device).reshape(w.shape).bool()
    prune = torch.zeros_like(w, dtype=torch.bool)
    for index, start in enumerate(range(0, cols, block_size)):
        stop = min(start + block_size, cols)
        w1, hinv1 = w[:, start:stop].clone(), h_inv[start:stop, start:stop]
        errors = torch.zeros_like(w1)
        diag = hinv1.diagonal()
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if not pattern:
            score = (w1.square() / diag.square().unsqueeze(0)).masked_fill(~old[:, start:stop], float("-inf"))
            lowest = torch.sort(score.flatten(), stable=True).indices[: counts[index]]
            mask1.view(-1)[lowest] = True
        for i in range(stop - start):
            if pattern and i % m == 0:
                group = w1[:, i : i + m].square() / diag[i : i + m].square().unsqueeze(0)
                group = group.masked_fill(~old[:, start + i : start + i + m], float("-inf"))
                drop = torch.topk(group, m - n, dim=1, largest=False).indices
                mask1[:, i : i + m].scatter_(1, drop, True)
            mask1[:, i] |= ~old[:, start + i]
            column = w1[:, i]
            quantised = column.masked_fill(mask1[:, i], 0.0)
            error = (column - quantised) / diag[i]
            w1[:, i:] -= error.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = quantised
            errors[:, i] = error
        w[:, start:stop] = w1
        w[:, stop:] -= errors @ h_inv[start:stop, stop:]
        prune[:, start:stop] = mask1
    w.masked_fill_(prune, 0.0)
    delta = w - original
    change = float((delta @ h * delta).sum())
    reference = float((original @ h * original).sum())
    error = (max(change, 0.0) / reference) ** 0.5 if reference > 0 else 0.0
    return SparseGPTResult(weight=w.to(dtype), keep=~prune, error=error)
