"""GPTQ: error-compensating rounding of Linear weights, layer by layer on calibration data.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers"
(2022). For one Linear with calibration inputs ``X`` (rows), ``H = 2 X^T X / n`` is accumulated on the
fly by a hook (X is never stored); columns are then rounded one at a time and each rounding error is
spread over the columns not yet rounded through the Cholesky factor of ``H^-1`` (lazy batch updates of
``block_size`` columns). Layers run in model order and each layer's inputs come from the model whose
earlier layers are already rounded, so later layers compensate earlier errors; a pass stops at the
layer being measured.

Block-wise weights (blockwise.py) get each block's scale from the block's columns as they stand when
the block is reached (GPTQ's ``groupsize``); with ``act_order`` (columns in decreasing ``diag(H)``)
scales come from the original weights ("static groups"). The layer's weight becomes the dequantized
result and its quantizer keeps the scales, so export writes exactly these codes.

Example:
    >>> info = gptq_quantize_(qmodel, calib_loader, damp=0.01, block_size=128)
    >>> info["layers"]["fc1"]["gptq_error"] < info["layers"]["fc1"]["rtn_error"]
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.inputs import batch_inputs, call_model
from netcompress.quantization.affine import compute_qparams
from netcompress.quantization.blockwise import BlockwiseFakeQuantize
from netcompress.quantization.modules import QuantLayer


class _Stop(Exception):
    """Raised by the Hessian hook once the layer has its input: the rest of the model need not run."""


def accumulate_hessian(
    model: nn.Module, layer: QuantLayer, loader: Iterable, *, num_batches: int
) -> tuple[torch.Tensor, int]:
    """``(H, rows)``: ``H = 2 X^T X / rows`` (float64) of ``layer``'s inputs over ``num_batches`` batches."""
    k = layer.layer.weight.shape[1]
    state = {"H": torch.zeros(k, k, dtype=torch.float64), "n": 0}

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().reshape(-1, k).double()
        state["H"] += x.t() @ x
        state["n"] += x.shape[0]
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if i >= num_batches:
                    break
                with contextlib.suppress(_Stop):
                    call_model(model, batch_inputs(batch))
    finally:
        handle.remove()
    if state["n"] == 0:
        raise ConfigError("GPTQ saw no calibration input for a layer (empty calib_loader or a dead branch)")
    return 2.0 * state["H"] / state["n"], state["n"]


def _qparams(w: torch.Tensor, spec: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row min-max scale and zero point of the columns ``w`` (N, g)."""
    return compute_qparams(w.amin(dim=1), w.amax(dim=1), spec)


def _round(w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: Any) -> torch.Tensor:
    """Round-to-grid and dequantize one column (or columns) with per-row ``scale``/``zp``."""
    qmin, qmax = spec.quant_range
    s, z = scale.reshape(-1, *([1] * (w.dim() - 1))), zp.reshape(-1, *([1] * (w.dim() - 1))).double()
    q = torch.clamp(torch.round(w * (1.0 / s)) + z, qmin, qmax)
    return (q - z) * s


def gptq_layer(
    weight: torch.Tensor, H: torch.Tensor, fq: Any, *, damp: float, block_size: int, act_order: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ on one weight ``(N, K)`` with Hessian ``H``; returns ``(dequantized W, scales, zero points)``.

    ``scales``/``zero points`` are shaped as ``fq`` holds them: ``(N * n_blocks,)`` block-wise, ``(N,)``
    per channel, ``(1,)`` per tensor.
    """
    spec = fq.spec
    W = weight.detach().double().clone()
    n, k = W.shape
    group = fq.block_size if isinstance(fq, BlockwiseFakeQuantize) else 0
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(k, dtype=H.dtype)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k)
    inv_perm = torch.argsort(perm)
    # scales fixed up front: per channel / per tensor always, block-wise with act_order (static groups)
    if group:
        n_blocks = -(-k // group)
        scales = torch.zeros(n, n_blocks, dtype=torch.float64)
        zps = torch.zeros(n, n_blocks, dtype=torch.int32)
        if act_order:
            for b in range(n_blocks):
                s, z = _qparams(W[:, b * group : (b + 1) * group].float(), spec)
                scales[:, b], zps[:, b] = s.double(), z
    elif spec.granularity == "per_tensor":
        s, z = compute_qparams(W.min().reshape(1).float(), W.max().reshape(1).float(), spec)
        scales, zps = s.double().expand(n), z.expand(n)
    else:
        s, z = _qparams(W.float(), spec)
        scales, zps = s.double(), z
    W, H = W[:, perm], H[perm][:, perm]
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    Q = torch.zeros_like(W)
    step = max(block_size, group) if group else block_size
    if group:
        step = -(-step // group) * group  # whole quantization blocks inside each lazy-update block
    for i1 in range(0, k, step):
        i2 = min(i1 + step, k)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            if group and not act_order and col % group == 0:
                b = col // group
                s, z = _qparams(W1[:, i : i + group].float(), spec)
                scales[:, b], zps[:, b] = s.double(), z
            if group:
                s_col, z_col = scales[:, col // group], zps[:, col // group]
            else:
                s_col, z_col = scales, zps
            w = W1[:, i]
            q = _round(w, s_col, z_col, spec)
            Q[:, i1 + i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    Q = Q[:, inv_perm]
    if group:
        return Q.float(), scales.float().reshape(-1), zps.reshape(-1)
    if spec.granularity == "per_tensor":
        return Q.float(), scales[:1].float(), zps[:1]
    return Q.float(), scales.float(), zps


def output_error(weight: torch.Tensor, reference: torch.Tensor, H: torch.Tensor) -> float:
    """Relative layer output error on the calibration inputs: ``tr(D H D^T) / tr(W H W^T)``, ``D = W - W_ref``."""
    d, r = weight.double() - reference.double(), reference.double()
    return float(((d @ H) * d).sum() / ((r @ H) * r).sum().clamp_min(1e-30))


def gptq_quantize_(
    model: nn.Module,
    loader: Iterable,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    num_batches: int = 8,
) -> dict[str, Any]:
    """GPTQ-round every weight-quantized Linear of a weight-only ``model`` (IN PLACE), in model order.

    Returns ``{"layers": {name: {"rtn_error", "gptq_error", "rows"}}}``: relative output errors on the
    calibration inputs of round-to-nearest (the quantizer's own scales) and of GPTQ.

    Example:
        >>> gptq_quantize_(qmodel, calib_loader)["layers"]["fc1"]["gptq_error"]
    """
    layers = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, QuantLayer)
        and isinstance(m.layer, nn.Linear)
        and m.weight_fq is not None
        and m.weight_fq.quantizing
        and m.input_fq is None
    }
    report: dict[str, Any] = {}
    for name, layer in layers.items():
        H, rows = accumulate_hessian(model, layer, loader, num_batches=num_batches)
        fq = layer.weight_fq
        w = layer.layer.weight.detach().clone()
        with torch.no_grad():
            rtn = fq(w)  # round-to-nearest with the quantizer's own scales, for the report
        q, scales, zps = gptq_layer(w, H, fq, damp=damp, block_size=block_size, act_order=act_order)
        with torch.no_grad():
            layer.layer.weight.copy_(q)
        fq.set_qparams(scales, zps)
        fq.freeze()
        report[name] = {
            "rows": rows,
            "rtn_error": output_error(rtn, w, H),
            "gptq_error": output_error(fq(layer.layer.weight.detach()), w, H),
        }
    return {"layers": report, "damp": damp, "block_size": block_size, "act_order": act_order}
