"""Block-wise weight quantization: one scale (and zero point) per ``block_size`` inputs of each output row.

A Linear weight ``(N, K)`` is cut along its input dimension into ``ceil(K / block_size)`` blocks per
row; the last block is padded with zeros (zero never widens a range: every range already includes 0),
so a block is a row of the ``(N * n_blocks, block_size)`` matrix and block-wise quantization is
per-channel quantization of that matrix. :class:`BlockwiseFakeQuantize` reuses the per-channel
observers and rounding on it, which is the layout ONNX Runtime's ``MatMulNBits`` stores
(``netcompress.export.onnx_nbits``).

Example:
    >>> fq = BlockwiseFakeQuantize(QuantSpec(bits=4), block_size=32)
    >>> w_hat = fq(torch.randn(64, 100)); fq.scale.shape     # 64 rows x 4 blocks
    torch.Size([256])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.quantization.affine import dequantize_tensor, fake_quantize, quantize_tensor
from netcompress.quantization.fake_quant import FakeQuantize
from netcompress.quantization.qparams import QuantSpec

BLOCK_SIZES = (16, 32, 64, 128, 256)


def check_block_size(block_size: int) -> None:
    """``block_size`` must be 0 (off) or a power of two >= 16 (what ``MatMulNBits`` accepts)."""
    if block_size and block_size not in BLOCK_SIZES:
        raise ConfigError(
            f"block_size={block_size!r} must be 0 (per-channel scales) or one of {BLOCK_SIZES} "
            "(a power of two >= 16, as ONNX Runtime's MatMulNBits requires)"
        )


def to_blocks(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """``(N, K)`` (or ``(N, ...)``, flattened) -> ``(N * n_blocks, block_size)``, the tail zero-padded."""
    w2 = w.reshape(w.shape[0], -1)
    pad = (-w2.shape[1]) % block_size
    if pad:
        w2 = F.pad(w2, (0, pad))
    return w2.reshape(-1, block_size)


def from_blocks(blocks: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_blocks` for a weight of ``shape``."""
    n = shape[0]
    k = int(torch.Size(shape[1:]).numel())
    return blocks.reshape(n, -1)[:, :k].reshape(shape)


class BlockwiseFakeQuantize(FakeQuantize):
    """A weight fake-quantizer with one scale/zero point per block of ``block_size`` inputs per row.

    ``scale`` and ``zero_point`` hold ``N * n_blocks`` values, row-major (row 0's blocks first).
    ``codes(w)`` gives the integer codes the forward pass rounds to, shaped ``(N, n_blocks, block_size)``.

    Example:
        >>> fq = BlockwiseFakeQuantize(QuantSpec(bits=4, scheme="asymmetric"), block_size=32)
        >>> fq.observe(layer.weight); q = fq.codes(layer.weight)
    """

    def __init__(self, spec: QuantSpec, *, block_size: int) -> None:
        check_block_size(block_size)
        if not block_size:
            raise ConfigError("BlockwiseFakeQuantize needs block_size > 0")
        super().__init__(spec.replace(granularity="per_channel", axis=0), role="weight")
        self.block_size = int(block_size)

    def observe(self, x: torch.Tensor) -> None:
        super().observe(to_blocks(x.detach(), self.block_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing and not torch.jit.is_tracing():
            self.observe(x)
        if not self.quantizing:
            return x
        blocks = fake_quantize(to_blocks(x, self.block_size), self.scale, self.zero_point, self.spec)
        return from_blocks(blocks, x.shape)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes (int32, in ``spec.quant_range``) of ``w``, shaped ``(N, n_blocks, block_size)``."""
        q = quantize_tensor(
            to_blocks(w.detach().float(), self.block_size), self.scale, self.zero_point, self.spec
        )
        return q.reshape(w.shape[0], -1, self.block_size)

    def dequantize(self, codes: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Float weight of ``shape`` from :meth:`codes` (the padding dropped)."""
        blocks = dequantize_tensor(codes.reshape(-1, self.block_size), self.scale, self.zero_point, self.spec)
        return from_blocks(blocks, shape)

    def extra_repr(self) -> str:
        return super().extra_repr().replace("per_channel", f"block_size={self.block_size}")


def use_blocks_(model: nn.Module, *, block_size: int) -> list[str]:
    """Give every weight-quantized Linear of ``model`` block-wise scales (IN PLACE); returns their names.

    The new quantizer keeps the layer's bits, scheme and observer and observes the weight at once.

    Example:
        >>> use_blocks_(qmodel, block_size=32)
        ['fc1', 'fc2']
    """
    from netcompress.quantization.modules import QuantLayer

    names = []
    for name, m in model.named_modules():
        if not (isinstance(m, QuantLayer) and isinstance(m.layer, nn.Linear) and m.weight_fq is not None):
            continue
        old = m.weight_fq
        if isinstance(old, BlockwiseFakeQuantize) or not old.quantizing or old.dynamic:
            continue
        fq = BlockwiseFakeQuantize(old.spec, block_size=block_size)
        fq.observe(m.layer.weight)
        if not old.observing:
            fq.freeze()
        m.weight_fq = fq
        names.append(name)
    return names


def weight_codes(fq: FakeQuantize, w: torch.Tensor) -> torch.Tensor:
    """The integer codes ``fq`` rounds ``w`` to, shaped like ``w`` (block-wise or not).

    Example:
        >>> weight_codes(qlayer.weight_fq, qlayer.layer.weight).shape == qlayer.layer.weight.shape
        True
    """
    if isinstance(fq, BlockwiseFakeQuantize):
        return from_blocks(fq.codes(w).reshape(-1, fq.block_size), w.shape)
    return quantize_tensor(w.detach().float(), fq.scale, fq.zero_point, fq.spec)


def weight_from_codes(fq: FakeQuantize, codes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`weight_codes`: the float weight ``(q - zero_point) * scale``."""
    if isinstance(fq, BlockwiseFakeQuantize):
        return fq.dequantize(to_blocks(codes, fq.block_size), codes.shape)
    return dequantize_tensor(codes, fq.scale, fq.zero_point, fq.spec)
