"""Quantization specs and the affine arithmetic every quantizer shares.

A :class:`QuantSpec` says *how* a tensor is quantized (bit width, per-tensor or per-channel,
symmetric or asymmetric, signed or not, which observer finds its range). The functions here
turn an observed range into ``(scale, zero_point)`` and apply them. They are kept apart from
the modules so observers (which search over clipping ranges) and the file packer use the very
same rounding as the fake-quant forward pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import ConfigError

GRANULARITIES = ("per_tensor", "per_channel")
SCHEMES = ("symmetric", "asymmetric")
# The only (quant_min, quant_max) pairs torch.onnx exports as QuantizeLinear/DequantizeLinear
# (any other range fails to export); lower bit widths ride inside one of them.
EXPORTABLE_RANGES = ((-128, 127), (0, 127), (0, 255))


@dataclasses.dataclass
class QuantSpec(Config):
    """How one tensor is quantized.

    ``observer_args`` go to the observer's constructor (e.g. ``{"momentum": 0.1}`` for
    ``moving_average``, ``{"pct": 99.99}`` for ``percentile``).

    Example:
        >>> QuantSpec(bits=4, granularity="per_channel", axis=0, scheme="symmetric")
    """

    bits: int = 8
    granularity: str = "per_tensor"
    axis: int = 0
    scheme: str = "symmetric"
    signed: bool = True
    observer: str = "minmax"
    observer_args: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_range("bits", self.bits, 2, 16)
        if int(self.bits) != self.bits:
            raise ConfigError(f"bits={self.bits!r} must be an integer")
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("scheme", self.scheme, SCHEMES)
        from netcompress.quantization.observers import OBSERVERS  # late: observers import this module

        check_choice("observer", self.observer, OBSERVERS.names())

    @property
    def quant_range(self) -> tuple[int, int]:
        """Integer range ``(qmin, qmax)``: signed ``[-2^(b-1), 2^(b-1)-1]``, else ``[0, 2^b-1]``."""
        if self.signed:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    @property
    def container_range(self) -> tuple[int, int]:
        """The int8/uint8 range the k-bit grid is exported in (itself above 8 bits)."""
        if self.bits > 8:
            return self.quant_range
        return (-128, 127) if self.signed else (0, 255)


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
    the k-bit grid; the exported QDQ pair then carries exactly the k-bit values.

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
    return torch.fake_quantize_per_tensor_affine(x, scale.reshape(1), zero_point.reshape(1), cmin, cmax)
