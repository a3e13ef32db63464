"""int8 and int4 embedding tables: ``nn.Embedding`` weights quantized per row or per block of a row.

The word-embedding table of a small transformer is often the largest tensor it has (all-MiniLM-L6-v2:
30,522 x 384 floats, 47 MB of its 90 MB), so a weight-only int4 file stays at 0.6x float while it is
float. :func:`quantize_embeddings_` replaces every ``nn.Embedding`` by :class:`QuantEmbedding`, whose
table is stored as codes with one scale per row (``block_size=0``) or per ``block_size`` values of a
row (and a zero point when asymmetric). The forward pass quantizes only the rows it gathers, with the
same rounding as the rest of netcompress, so a batch costs no more than a float lookup.

Exported (``export_onnx(..., int8=True)``, :mod:`netcompress.export.onnx_embeddings`) as an int8
initializer -> ``Gather`` -> ``Cast`` -> ``Mul`` by the gathered row scales (standard ONNX; the table
stays int8 in ONNX Runtime's optimised file), or, block-wise, as ``com.microsoft::GatherBlockQuantized``
(4 or 8 bits packed in uint8).

Example:
    >>> qmodel = nc.quantize(bert, mode="weight_only", bits=4, embeddings="int4")
    >>> info = quantize_embeddings_(model, bits=8)            # or directly, in place
    >>> info["layers"], info["packed_bytes"]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netcompress.core.config import check_choice
from netcompress.core.errors import ConfigError
from netcompress.core.selection import set_submodule
from netcompress.quantization.affine import fake_quantize, quantize_tensor
from netcompress.quantization.blockwise import BlockwiseFakeQuantize, check_block_size, from_blocks, to_blocks
from netcompress.quantization.fake_quant import FakeQuantize
from netcompress.quantization.modules import LayerWrapper
from netcompress.quantization.qparams import SCHEMES, QuantSpec

# the ``embeddings`` option of the PTQ configs -> bits (None: tables stay float)
EMBEDDING_MODES = {"float": None, "int8": 8, "int4": 4}
DEFAULT_INT4_BLOCK = 32  # int4 needs blocks: one scale per 384-value row loses too much


def check_embedding_options(mode: str, block_size: int | None) -> None:
    """Validate the ``embeddings`` / ``embedding_block_size`` config fields (errors name the key)."""
    check_choice("embeddings", mode, tuple(EMBEDDING_MODES))
    if block_size is not None:
        check_block_size(block_size)
        if mode == "int4" and block_size == 0:
            raise ConfigError(
                "embedding_block_size=0 (one scale per row) is for embeddings='int8'; int4 tables need "
                f"blocks (16-256, default {DEFAULT_INT4_BLOCK}), as ONNX Runtime's GatherBlockQuantized requires"
            )


def resolved_block_size(bits: int, block_size: int | None) -> int:
    """The block size a table is quantized with: ``None`` means per row at 8 bits, 32 at 4 bits."""
    if block_size is None:
        return 0 if bits == 8 else DEFAULT_INT4_BLOCK
    return int(block_size)


class QuantEmbedding(LayerWrapper):
    """``layer`` (an ``nn.Embedding``) whose rows come out fake-quantized by ``weight_fq``.

    ``weight_fq`` is a per-row :class:`FakeQuantize` (``per_channel``, axis 0) or a
    :class:`BlockwiseFakeQuantize`; only the gathered rows are rounded, with their own scales.
    """

    def __init__(self, layer: nn.Embedding, weight_fq: FakeQuantize) -> None:
        super().__init__()
        self.layer = layer
        self.weight_fq = weight_fq

    @property
    def block_size(self) -> int:
        return self.weight_fq.block_size if isinstance(self.weight_fq, BlockwiseFakeQuantize) else 0

    def _row_qparams(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.layer.weight.shape[0]
        fq = self.weight_fq
        scale = fq.scale.reshape(rows, -1).index_select(0, flat).reshape(-1)
        zero_point = fq.zero_point.reshape(rows, -1).index_select(0, flat).reshape(-1)
        return scale, zero_point

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        fq = self.weight_fq
        if fq.observing and not torch.jit.is_tracing():
            fq.observe(self.layer.weight)
        if not fq.quantizing:
            return self.layer(ids)
        flat = ids.reshape(-1)
        rows = self.layer.weight.index_select(0, flat)
        scale, zero_point = self._row_qparams(flat)
        if self.block_size:
            blocks = fake_quantize(to_blocks(rows, self.block_size), scale, zero_point, fq.spec)
            rows = from_blocks(blocks, rows.shape)
        else:
            rows = fake_quantize(rows, scale, zero_point, fq.spec)
        return rows.reshape(*ids.shape, rows.shape[-1])

    def codes(self) -> torch.Tensor:
        """The table's integer codes (int32), ``(rows, n_blocks, block_size)`` block-wise, else ``(rows, dim)``."""
        fq, w = self.weight_fq, self.layer.weight.detach().float()
        if self.block_size:
            return fq.codes(w)
        return quantize_tensor(w, fq.scale, fq.zero_point, fq.spec)

    def dequantized_weight(self) -> torch.Tensor:
        """The whole table as the forward pass sees it (for checks; the forward never builds it)."""
        return self.forward(torch.arange(self.layer.weight.shape[0]))

    def extra_repr(self) -> str:
        return f"{self.layer.num_embeddings}, {self.layer.embedding_dim}, int{self.weight_fq.bits}, block_size={self.block_size}"


def embedding_problem(module: nn.Module) -> str | None:
    """Why an ``nn.Embedding`` stays float (None: it can be quantized)."""
    if type(module).forward is not nn.Embedding.forward:
        return f"{type(module).__name__} has its own forward"
    if module.max_norm is not None:
        return "max_norm renormalises rows at lookup time"
    if module.sparse:
        return "sparse gradients"
    return None


def make_embedding_quantizer(
    layer: nn.Embedding, *, bits: int, block_size: int, scheme: str = "symmetric"
) -> FakeQuantize:
    """A frozen weight quantizer for ``layer``'s table (per row, or block-wise along the row)."""
    check_choice("scheme", scheme, SCHEMES)
    spec = QuantSpec(bits=bits, granularity="per_channel", axis=0, scheme=scheme)
    fq = (
        BlockwiseFakeQuantize(spec, block_size=block_size)
        if block_size
        else FakeQuantize(spec, role="weight")
    )
    fq.observe(layer.weight.detach())
    return fq.freeze()


def quantize_embeddings_(
    model: nn.Module, *, bits: int, block_size: int | None = None, scheme: str = "symmetric"
) -> dict[str, Any]:
    """Replace (IN PLACE) every ``nn.Embedding`` of ``model`` by a :class:`QuantEmbedding`.

    ``bits`` 8 or 4; ``block_size`` None (per row at 8 bits, 32 at 4 bits), 0 (per row) or 16-256.
    Returns ``{"layers", "kept_float": {name: reason}, "bits", "block_size", "packed_bytes",
    "float_bytes"}``: ``packed_bytes`` counts codes at ``bits`` per value plus 4 bytes per scale
    (and 1 per zero point when asymmetric), as the exported file stores them.

    Example:
        >>> quantize_embeddings_(bert, bits=4)["layers"]
        ['embeddings.word_embeddings', 'embeddings.position_embeddings', 'embeddings.token_type_embeddings']
    """
    if bits not in (4, 8):
        raise ConfigError(f"embedding bits={bits!r}: tables export at 8 or 4 bits")
    block = resolved_block_size(bits, block_size)
    check_embedding_options("int8" if bits == 8 else "int4", block)
    info: dict[str, Any] = {"layers": [], "kept_float": {}, "bits": bits, "block_size": block}
    packed = float_bytes = 0
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    for name, layer in targets:
        problem = embedding_problem(layer)
        if problem is None and bits == 4 and layer.embedding_dim % 2:
            problem = f"odd row length {layer.embedding_dim}: 4-bit codes pack two per byte"
        if problem is not None:
            info["kept_float"][name] = problem
            continue
        fq = make_embedding_quantizer(layer, bits=bits, block_size=block, scheme=scheme)
        replacement = QuantEmbedding(layer, fq)
        if name:
            set_submodule(model, name, replacement)
        else:
            model = replacement
        rows, dim = layer.weight.shape
        zp_bytes = fq.zero_point.numel() if scheme == "asymmetric" else 0
        packed += (rows * dim * bits + 7) // 8 + 4 * fq.scale.numel() + zp_bytes
        float_bytes += 4 * layer.weight.numel()
        info["layers"].append(name)
    info.update(packed_bytes=packed, float_bytes=float_bytes)
    return info


def embedding_summary(model: nn.Module) -> dict[str, Any]:
    """``{name: {bits, block_size, rows, dim}}`` of the quantized tables in ``model``."""
    return {
        n: {
            "bits": m.weight_fq.bits,
            "block_size": m.block_size,
            "rows": m.layer.num_embeddings,
            "dim": m.layer.embedding_dim,
        }
        for n, m in model.named_modules()
        if isinstance(m, QuantEmbedding)
    }
