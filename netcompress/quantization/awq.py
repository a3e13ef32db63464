"""AWQ: activation-aware per-input-channel scales before low-bit weight rounding.

Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration" (2023).
Input channels that carry large activations matter most; scaling their weight columns up by ``s_j``
(and the input down by ``1/s_j``) gives them finer effective rounding. ``s = mean|X_j|^a``, normalised
to geometric mean 1, with the exponent ``a`` searched over ``grid`` values in ``[0, 1)`` to minimise the
group's output error ``||X W^T - (X/s) Q(W s)^T||`` on calibration rows (``a = 0`` is plain rounding,
so the search never picks worse than round-to-nearest on those rows). The scales fold into the
preceding LayerNorm/Linear where the graph allows (smoothing.py); elsewhere the Linear becomes
:class:`~netcompress.quantization.smoothing.InputScaled` (a ``Mul`` by ``1/s`` before it). The
returned float model computes the same function as the input model.

Example:
    >>> scaled, info = awq_scale(model, calib_loader, bits=4, block_size=32)
    >>> info["layers"]["fc1"]["alpha"], info["layers"]["fc1"]["error_ratio"]
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from netcompress.quantization.blockwise import BlockwiseFakeQuantize
from netcompress.quantization.fake_quant import FakeQuantize
from netcompress.quantization.qparams import QuantSpec
from netcompress.quantization.smoothing import apply_scales_, input_statistics, scale_groups


def round_weight(w: torch.Tensor, *, bits: int, block_size: int, scheme: str) -> torch.Tensor:
    """Round-to-nearest fake-quantized ``w`` as weight-only quantization would (block-wise or per row)."""
    spec = QuantSpec(bits=bits, scheme=scheme, granularity="per_channel", axis=0)
    fq = (
        BlockwiseFakeQuantize(spec, block_size=block_size)
        if block_size
        else FakeQuantize(spec, role="weight")
    )
    with torch.no_grad():
        return fq(w.detach().float())


def _group_error(x: torch.Tensor, weights: list[torch.Tensor], s: torch.Tensor, **rounding: Any) -> float:
    err = 0.0
    xs = x / s
    for w in weights:
        ref = x @ w.t()
        err += float(((xs @ round_weight(w * s, **rounding).t()) - ref).pow(2).sum())
    return err


def awq_scale(
    model: nn.Module,
    loader: Iterable,
    *,
    bits: int = 4,
    block_size: int = 32,
    scheme: str = "symmetric",
    grid: int = 20,
    num_batches: int = 8,
    max_rows: int = 1024,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` with AWQ scales applied to every plain ``nn.Linear``; the same function.

    Returns it and ``{"layers": {name: {"alpha", "error_ratio", "folded_into"}}}``; ``error_ratio`` is
    the group's output error with the chosen scales over plain rounding's, on up to ``max_rows`` rows.

    Example:
        >>> scaled, info = awq_scale(model, calib_loader, bits=4, block_size=32, grid=20)
    """
    work = copy.deepcopy(model).eval()
    groups, unfoldable = scale_groups(work)
    groups = groups + [{"linears": [n], "producer": None, "kind": ""} for n in unfoldable]
    stats = input_statistics(
        work, loader, [g["linears"][0] for g in groups], num_batches=num_batches, max_rows=max_rows
    )
    rounding = {"bits": bits, "block_size": block_size, "scheme": scheme}
    report: dict[str, Any] = {}
    for group in groups:
        first = group["linears"][0]
        if first not in stats:
            report.update(
                {
                    n: {"alpha": None, "reason": "never reached by the calibration batches"}
                    for n in group["linears"]
                }
            )
            continue
        x = stats[first]["rows"]
        a = stats[first]["absmean"].clamp_min(1e-8)
        weights = [work.get_submodule(n).weight.detach().float() for n in group["linears"]]
        base = _group_error(x, weights, torch.ones_like(a), **rounding)
        best_alpha, best_err, best_s = 0.0, base, torch.ones_like(a)
        for i in range(1, grid):
            alpha = i / grid
            s = a.pow(alpha)
            s = s / (s.max() * s.min()).sqrt()
            err = _group_error(x, weights, s, **rounding)
            if err < best_err:
                best_alpha, best_err, best_s = alpha, err, s
        if group["producer"] is None and best_err > 0.99 * base:
            best_alpha, best_err = 0.0, base  # a Mul per call is not worth under 1% less error
        if best_alpha > 0:
            apply_scales_(work, group, best_s)
        where = group["producer"] if group["producer"] is not None else "input Mul"
        for n in group["linears"]:
            report[n] = {
                "alpha": best_alpha,
                "error_ratio": best_err / max(base, 1e-30),
                "folded_into": where if best_alpha > 0 else None,
            }
            if n in unfoldable:
                report[n]["not_folded"] = unfoldable[n]
    return work, {"layers": report, "grid": grid}
