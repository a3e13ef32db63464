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

import torch
from torch import nn

from netcompress.export.onnx_contrib import StandIn, contrib_node, pack_offset_codes, replace_module


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
            n_blocks = int(codes.shape[1])
            self.data = pack_offset_codes(codes.reshape(rows, -1)[:, :dim], self.bits)
            self.scales = fq.scale.detach().float().reshape(rows, n_blocks).clone()
            zp = fq.zero_point.reshape(rows, n_blocks)
            self.zero_points = None if self.symmetric else pack_offset_codes(zp, self.bits)
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

    def symbolic(self, g: Any, ids: Any, reference: Any) -> Any:
        """``GatherBlockQuantized``, or ``Gather -> Cast [-> Sub] -> Mul`` per row (:class:`StandIn` calls it)."""
        if self.block_size:
            return contrib_node(
                g, "GatherBlockQuantized", self.data, ids, self.scales, self.zero_points, like=reference,
                bits_i=self.bits, block_size_i=self.block_size, gather_axis_i=0, quantize_axis_i=1,
            )  # fmt: skip

        def gather(table: torch.Tensor) -> Any:
            return g.op("Gather", g.op("Constant", value_t=table), ids, axis_i=0)

        rows = g.op("Cast", gather(self.data), to_i=1)  # 1 = FLOAT
        if self.zero_points is not None:
            rows = g.op("Sub", rows, gather(self.zero_points))
        return g.op("Mul", rows, gather(self.scales))


class QuantGather(StandIn):
    """Stands in for a :class:`QuantEmbedding` during export: same rows, integer table in the file."""

    def __init__(self, quant_embedding: nn.Module, codes: EmbeddingCodes) -> None:
        super().__init__(quant_embedding, codes)


def swap_quant_embeddings(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """Replace (IN PLACE) each :class:`QuantEmbedding` of ``model`` by :class:`QuantGather`.

    Returns the model and ``{"layers", "ops": {name: "Gather" | "GatherBlockQuantized"}, "packed_bytes"}``.
    """
    from netcompress.quantization.embeddings import QuantEmbedding

    info: dict[str, Any] = {"layers": [], "ops": {}, "packed_bytes": 0}
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantEmbedding)]:
        codes = EmbeddingCodes(module)
        model = replace_module(model, name, QuantGather(module, codes))
        info["layers"].append(name)
        info["ops"][name] = codes.op
        info["packed_bytes"] += codes.size_bytes
    return model, info
