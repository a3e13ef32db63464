"""Quantized embedding tables exported so ONNX Runtime gathers integer rows.

A :class:`~netcompress.quantization.embeddings.QuantEmbedding` (``nc.quantize(..., embeddings="int8")``)
becomes, in the exported file:

- per row (``block_size=0``, int8): ``Gather(codes int8 (V, D), ids) -> Cast(float) [-> Sub(Gather(zero
  points))] -> Mul(Gather(scales (V, 1), ids))``, standard ONNX. The indices are the model's inputs, so
  ONNX Runtime's optimiser cannot fold the table back to float: the optimised file keeps it int8.
- block-wise (int4, or int8 with ``block_size``): one ``com.microsoft::GatherBlockQuantized`` with
  ``data`` uint8 ``(V, D * bits / 8)`` (4-bit codes packed two per byte along the row, low nibble first),
  ``scales`` ``(V, n_blocks)``, ``zero_points`` (asymmetric only, packed the same way), ``gather_axis=0``,
  ``quantize_axis=1``. netcompress's signed codes are stored as ``q + 2^(bits-1)``, which is the zero point
  ONNX Runtime assumes when none is given.

Both hold the very codes the PyTorch model rounds to, so outputs match up to float reassociation.

Example:
    >>> work, info = swap_quant_embeddings(copy.deepcopy(qmodel))
    >>> info["layers"], info["ops"]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.core.selection import set_submodule
from netcompress.export.onnx_nbits import _pack_rows


class EmbeddingCodes:
    """The constant inputs of one quantized lookup (a plain object the tracer hands to ``symbolic``)."""

    def __init__(self, module: nn.Module) -> None:
        fq = module.weight_fq
        rows, dim = (int(d) for d in module.layer.weight.shape)
        self.bits = fq.bits
        self.block_size = module.block_size
        self.symmetric = fq.spec.scheme == "symmetric"
        codes = module.codes()
        if self.block_size:
            offset = 2 ** (self.bits - 1)
            n_blocks = int(codes.shape[1])
            flat = (codes.to(torch.int64) + offset).reshape(rows, -1)[:, :dim].numpy()
            self.data = torch.from_numpy(
                _pack_rows(flat, self.bits) if self.bits < 8 else flat.astype(np.uint8)
            )
            self.scales = fq.scale.detach().float().reshape(rows, n_blocks).clone()
            zp = (fq.zero_point.to(torch.int64).reshape(rows, n_blocks) + offset).numpy()
            self.zero_points = (
                None
                if self.symmetric
                else torch.from_numpy(_pack_rows(zp, self.bits) if self.bits < 8 else zp.astype(np.uint8))
            )
        else:
            self.data = codes.to(torch.int8).contiguous()
            self.scales = fq.scale.detach().float().reshape(rows, 1).clone()
            self.zero_points = None if self.symmetric else fq.zero_point.reshape(rows, 1).float().clone()

    @property
    def op(self) -> str:
        return "GatherBlockQuantized" if self.block_size else "Gather"

    @property
    def size_bytes(self) -> int:
        zp = 0 if self.zero_points is None else self.zero_points.numel() * (1 if self.block_size else 4)
        return self.data.numel() + 4 * self.scales.numel() + zp


class _QuantGatherFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, reference: torch.Tensor, c: EmbeddingCodes) -> torch.Tensor:  # noqa: D401
        return reference.clone()

    @staticmethod
    def symbolic(g: Any, ids: Any, reference: Any, c: EmbeddingCodes) -> Any:
        def const(t: torch.Tensor) -> Any:
            return g.op("Constant", value_t=t)

        if c.block_size:
            inputs = [const(c.data), ids, const(c.scales)]
            if c.zero_points is not None:
                inputs.append(const(c.zero_points))
            out = g.op(
                "com.microsoft::GatherBlockQuantized",
                *inputs,
                bits_i=c.bits,
                block_size_i=c.block_size,
                gather_axis_i=0,
                quantize_axis_i=1,
            )
            out.setType(reference.type())  # the exporter has no shape inference for contrib ops
            return out
        rows = g.op("Cast", g.op("Gather", const(c.data), ids, axis_i=0), to_i=1)  # 1 = FLOAT
        if c.zero_points is not None:
            rows = g.op("Sub", rows, g.op("Gather", const(c.zero_points), ids, axis_i=0))
        return g.op("Mul", rows, g.op("Gather", const(c.scales), ids, axis_i=0))


class QuantGather(nn.Module):
    """Stands in for a :class:`QuantEmbedding` during export: same rows, integer table in the file."""

    def __init__(self, quant_embedding: nn.Module, codes: EmbeddingCodes) -> None:
        super().__init__()
        self.quant_embedding = quant_embedding
        self.codes = codes

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # the PyTorch lookup gives the traced value its shape; symbolic() replaces its nodes
        return _QuantGatherFn.apply(ids, self.quant_embedding(ids), self.codes)


def swap_quant_embeddings(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """Replace (IN PLACE) each :class:`QuantEmbedding` of ``model`` by :class:`QuantGather`.

    Returns the model and ``{"layers", "ops": {name: "Gather" | "GatherBlockQuantized"}, "packed_bytes"}``.
    """
    from netcompress.quantization.embeddings import QuantEmbedding

    info: dict[str, Any] = {"layers": [], "ops": {}, "packed_bytes": 0}
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantEmbedding)]:
        codes = EmbeddingCodes(module)
        replacement = QuantGather(module, codes)
        if name:
            set_submodule(model, name, replacement)
        else:
            model = replacement
        info["layers"].append(name)
        info["ops"][name] = codes.op
        info["packed_bytes"] += codes.size_bytes
    return model, info
