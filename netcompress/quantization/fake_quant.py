"""Fake-quantization modules: quantize-dequantize in float, with scales held as buffers.

:class:`FakeQuantize` observes tensors, turns the observed range into ``scale`` and
``zero_point`` **buffers** and applies them with ``torch.fake_quantize_*`` so the module exports
to ONNX as a ``QuantizeLinear``/``DequantizeLinear`` pair carrying those fixed numbers
(scales computed inside ``forward`` would export as ``Abs``/``ReduceMax``/``Div`` nodes run on
every call: such an int8 model ran 4x slower than float). ``freeze()``
stops observing. Gradients pass straight through inside the range (STE).

:class:`LSQFakeQuantize` learns its step size (Esser et al., "Learned Step Size Quantization"):
the scale is a parameter whose gradient is scaled by ``1 / sqrt(N * qmax)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from netcompress.quantization.affine import _shape_for, compute_qparams, fake_quantize
from netcompress.quantization.observers import build_observer
from netcompress.quantization.qparams import QuantSpec

__all__ = ["FakeQuantize", "LSQFakeQuantize", "QuantSpec"]


class FakeQuantize(nn.Module):
    """Observe -> compute scale/zero point -> fake-quantize.

    Flags (plain attributes, so they survive pickling): ``observing`` updates the range from
    each input; ``quantizing`` applies quantization (off while calibrating activations in float);
    ``dynamic`` recomputes the range from every input and never freezes (dynamic quantization).

    Example:
        >>> fq = FakeQuantize(QuantSpec(bits=8, granularity="per_channel", axis=0))
        >>> w_q = fq(conv.weight); fq.freeze()
    """

    def __init__(self, spec: QuantSpec, *, dynamic: bool = False, role: str = "activation") -> None:
        super().__init__()
        self.spec = spec
        self.role = role  # "weight": the observer forgets old ranges (weights are seen whole each time)
        self.observer = build_observer(spec)
        self.observing = True
        self.quantizing = True
        self.dynamic = dynamic
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))

    @property
    def bits(self) -> int:
        return self.spec.bits

    @property
    def calibrated(self) -> bool:
        return self.observer.has_data

    def freeze(self) -> FakeQuantize:
        """Stop observing: ``scale`` and ``zero_point`` stay fixed from now on (in place)."""
        self.observing = False
        return self

    def unfreeze(self) -> FakeQuantize:
        """Resume observing (in place), e.g. weights during quantization-aware training."""
        self.observing = True
        return self

    def observe(self, x: torch.Tensor) -> None:
        """Feed ``x`` to the observer and refresh ``scale``/``zero_point`` from its range."""
        with torch.no_grad():
            if self.role == "weight":
                self.observer.reset()
            self.observer.observe(x)
            self.set_qparams(*compute_qparams(*self.observer.range(), self.spec))

    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Replace the buffers (their shape may change from ``(1,)`` to ``(C,)``)."""
        self.scale = scale.detach().reshape(-1).float().clone()
        self.zero_point = zero_point.detach().reshape(-1).to(torch.int32).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            with torch.no_grad():
                rows = x.detach().reshape(1, -1) if self.spec.granularity == "per_tensor" else None
                lo, hi = (
                    (rows.amin(dim=1), rows.amax(dim=1))
                    if rows is not None
                    else _channel_minmax(x, self.spec)
                )
                scale, zp = compute_qparams(lo, hi, self.spec)
            return fake_quantize(x, scale, zp, self.spec)
        if self.observing and not torch.jit.is_tracing():
            self.observe(x)
        if not self.quantizing:
            return x
        return fake_quantize(x, self.scale, self.zero_point, self.spec)

    def extra_repr(self) -> str:
        s = self.spec
        sign = "int" if s.signed else "uint"
        state = "dynamic" if self.dynamic else ("observing" if self.observing else "frozen")
        return f"{sign}{s.bits}, {s.granularity}, {s.scheme}, observer={s.observer}, {state}"


def _channel_minmax(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    from netcompress.quantization.observers import channel_rows

    rows = channel_rows(x, spec)
    return rows.amin(dim=1), rows.amax(dim=1)


class _RoundSTE(torch.autograd.Function):
    """round() whose gradient is the identity (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Value of ``x``, gradient multiplied by ``factor`` (LSQ's step-size gradient scale)."""
    scaled = x * factor
    return (x - scaled).detach() + scaled


class LSQFakeQuantize(FakeQuantize):
    """Fake quantization with a learned step size (LSQ).

    The first batch (or :meth:`init_from`) initialises ``scale`` from the observer; after that
    the scale is an ``nn.Parameter`` trained with the network. In ``eval()`` mode the forward is
    the exportable ``torch.fake_quantize_*`` path with the learned scale.

    Example:
        >>> fq = LSQFakeQuantize(QuantSpec(bits=4)); y = fq(x); y.sum().backward()
        >>> fq.scale.grad is not None
        True
    """

    def __init__(self, spec: QuantSpec, *, role: str = "activation") -> None:
        super().__init__(spec, role=role)
        del self.scale
        self.scale = nn.Parameter(torch.ones(1))
        self.initialised = False

    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        # assign .data so an optimizer built before the first batch still holds this parameter
        self.scale.data = scale.detach().reshape(-1).float().clone()
        self.zero_point = zero_point.detach().reshape(-1).to(torch.int32).clone()
        self.initialised = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialised and not torch.jit.is_tracing():
            self.observe(x)
        if not self.quantizing:
            return x
        if not self.training:
            return fake_quantize(x, self.scale.detach().abs(), self.zero_point, self.spec)
        qmin, qmax = self.spec.quant_range
        num_per_scale = x.numel() / max(1, self.scale.numel())
        step = _grad_scale(self.scale.abs(), 1.0 / math.sqrt(num_per_scale * max(1, qmax)))
        s = _shape_for(step, x, self.spec)
        z = _shape_for(self.zero_point, x, self.spec).to(x.dtype)
        q = _RoundSTE.apply(torch.clamp(x / s + z, qmin, qmax))
        return (q - z) * s

    def extra_repr(self) -> str:
        return super().extra_repr().replace("observing", "learned").replace("frozen", "learned")
