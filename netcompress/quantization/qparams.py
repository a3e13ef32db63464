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

from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.quantization.affine import (  # noqa: F401 - the arithmetic, re-exported
    compute_qparams,
    dequantize_tensor,
    fake_quantize,
    quantize_tensor,
)
from netcompress.quantization.observers import OBSERVERS

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
