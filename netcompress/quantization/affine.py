"""The affine arithmetic every quantizer shares: an observed range to ``(scale, zero_point)``, and
quantize / dequantize / fake-quantize with them. Observers (which search over clipping ranges), the
fake-quant modules and the file packer all use this one rounding."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from netcompress.quantization.qparams import QuantSpec


def compute_qparams(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) mapping ``[lo, hi]`` onto ``spec``'s integer range.

    The range is widened to include 0 so zero (padding, ReLU output) is exact. Symmetric
    quantization keeps the zero point at 0; a signed symmetric grid maps ``max|x|`` to ``qmax``.

    Example:
        >>> compute_qparams(torch.tensor([-1.0]), torch.tensor([1.0]), QuantSpec(bits=8))
        (tensor([0.0079]), tensor([0], dtype=torch.int32))
    """
    qmin, qmax = spec.quant_range
    lo = torch.clamp(lo.detach().float(), max=0.0)
    hi = torch.clamp(hi.detach().float(), min=0.0)
    eps = torch.finfo(torch.float32).eps
    if spec.scheme == "symmetric":
        amax = torch.maximum(-lo, hi) if spec.signed else hi
        scale = amax / float(qmax)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (hi - lo) / float(qmax - qmin)
        scale = torch.clamp(scale, min=eps)
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    # an all-zero channel would give scale 0 (division by zero downstream): any scale is exact there
    scale = torch.where(scale > eps, scale, torch.ones_like(scale))
    return scale.float(), zero_point


def _shape_for(t: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Reshape ``t`` (one value, or one per channel) to broadcast along ``spec.axis`` of ``x``.

    Decided from the spec, not from ``t``'s size, so ONNX tracing sees no data-dependent branch.
    """
    axis = spec.axis
    if spec.granularity == "per_tensor":
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def quantize_tensor(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    """Integer codes (int32) of ``x``: ``clamp(round(x / scale) + zero_point, qmin, qmax)``.

    Example:
        >>> s, z = compute_qparams(w.min(), w.max(), QuantSpec(bits=4))
        >>> q = quantize_tensor(w, s, z, QuantSpec(bits=4))   # values in [-8, 7]
    """
    qmin, qmax = spec.quant_range
    s = _shape_for(scale, x, spec)
    z = _shape_for(zero_point, x, spec)
    # multiply by the reciprocal exactly as torch.fake_quantize_* does, so codes agree bit for bit
    q = torch.round(x * (1.0 / s)) + z
    return torch.clamp(q, qmin, qmax).to(torch.int32)


def dequantize_tensor(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    """Float values ``(q - zero_point) * scale`` of integer codes ``q``.

    Example:
        >>> w_hat = dequantize_tensor(quantize_tensor(w, s, z, spec), s, z, spec)
    """
    s = _shape_for(scale, q, spec)
    z = _shape_for(zero_point, q, spec)
    return (q.to(torch.float32) - z.to(torch.float32)) * s


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    """Quantize-dequantize ``x`` with a straight-through gradient, in an ONNX-exportable form.

    Uses ``torch.fake_quantize_per_{tensor,channel}_affine`` on the int8/uint8 container
    range. Below 8 bits, ``x`` is first clamped to the k-bit range so the int8 op lands on
    the k-bit grid; the exported QDQ pair then carries exactly the k-bit values (torch.onnx exports only
    the int8/uint8 ranges, and values already on a 4-bit grid are exact in an int8 pair of the same scale).

    Example:
        >>> y = fake_quantize(x, scale, zero_point, QuantSpec(bits=4))
    """
    qmin, qmax = spec.quant_range
    cmin, cmax = spec.container_range
    per_channel = spec.granularity == "per_channel"
    if (qmin, qmax) != (cmin, cmax):
        s = _shape_for(scale, x, spec)
        z = _shape_for(zero_point, x, spec).to(x.dtype)
        x = torch.maximum(torch.minimum(x, (qmax - z) * s), (qmin - z) * s)
    if per_channel:
        axis = spec.axis if spec.axis >= 0 else x.dim() + spec.axis
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, cmin, cmax)
    # 0-d scale and zero point: they export as scalar initializers, and ONNX Runtime fuses QDQ around
    # Add/Mul/pooling (QLinearAdd...) only with scalar ones (with shape (1,) every residual Add stayed float)
    return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero_point.reshape(()), cmin, cmax)
