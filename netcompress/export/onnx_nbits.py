"""Weight-only 2-8 bit Linear layers exported as ONNX Runtime's ``com.microsoft::MatMulNBits``.

A weight-only quantized ``nn.Linear`` (``nc.quantize(model, mode="weight_only", bits=4, block_size=32)``)
becomes one ``MatMulNBits`` node (+ ``Add`` for the bias) whose inputs hold the very codes the PyTorch
model rounds to:

- ``B``: uint8 ``(N, n_blocks, blob_size)``, ``blob_size = block_size * bits / 8``; codes packed along K
  LSB first (4 bits: the first code in the low nibble), the last block zero-padded;
- ``scales``: float ``(N, n_blocks)``;
- ``zero_points`` (asymmetric only): uint8 ``(N, ceil(n_blocks * bits / 8))``, packed the same way;
  symmetric layers omit it and ORT uses ``2^(bits-1)``.

netcompress codes are signed (``[-2^(b-1), 2^(b-1)-1]``, zero point likewise); the file stores
``q + 2^(c-1)`` and ``zp + 2^(c-1)`` where ``c`` is the container width: ORT runs 2, 4 and 8 bits, so
3-bit codes ride in 4 bits and 5-7 bit codes in 8 (the k-bit grid is a subset: exact, but no smaller
than the container; the summary says which). Per-channel and per-tensor weights export too, their
scale repeated in every block of 128 (or fewer when K is small). Outputs match the PyTorch model up to
float reassociation with ``accuracy_level=0`` (ORT dequantizes to float); ``accuracy_level=4`` lets
ORT quantize the activations to int8 inside the kernel (faster, less exact).

Example:
    >>> work, info = swap_nbits_linears(copy.deepcopy(qmodel))
    >>> info["layers"], info["kept_float"], info["container_bits"]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netcompress.export.onnx_contrib import StandIn, contrib_node, pack_offset_codes, replace_module

# widths ORT's MatMulNBits kernels run; any other k-bit grid is exported in the next one up
CONTAINER_BITS = {2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


class NBitsWeight:
    """The packed inputs and attributes of one ``MatMulNBits`` node (a plain object for ``symbolic``)."""

    def __init__(self, module: nn.Module, *, accuracy_level: int | None = None) -> None:
        from netcompress.quantization.affine import quantize_tensor
        from netcompress.quantization.blockwise import BlockwiseFakeQuantize, to_blocks

        fq = module.weight_fq
        weight = module.layer.weight.detach().float()
        self.N, self.K = (int(d) for d in weight.shape)
        self.weight_bits = fq.bits
        self.bits = CONTAINER_BITS[fq.bits]
        if isinstance(fq, BlockwiseFakeQuantize):
            self.block_size = fq.block_size
            codes = fq.codes(weight)  # (N, n_blocks, block), padding rounds to the zero point
            scale = fq.scale.reshape(self.N, -1)
            zp = fq.zero_point.reshape(self.N, -1)
        else:
            self.block_size = min(128, max(16, 1 << (self.K - 1).bit_length()))
            q = quantize_tensor(weight, fq.scale, fq.zero_point, fq.spec)
            zp_row = fq.zero_point.reshape(-1, 1).expand(self.N, 1)  # per-tensor or per-row
            padded = torch.cat([q, zp_row.expand(self.N, (-self.K) % self.block_size).to(q.dtype)], dim=1)
            codes = to_blocks(padded, self.block_size).reshape(self.N, -1, self.block_size)
            n_blocks = codes.shape[1]
            scale = fq.scale.reshape(-1, 1).expand(self.N, n_blocks)
            zp = zp_row.expand(self.N, n_blocks)
        self.n_blocks = int(codes.shape[1])
        packed = pack_offset_codes(codes.reshape(self.N * self.n_blocks, -1), self.bits)
        self.packed = packed.reshape(self.N, self.n_blocks, -1)
        self.scales = scale.detach().float().contiguous().clone()
        self.symmetric = fq.spec.scheme == "symmetric"
        self.zero_points = None if self.symmetric else pack_offset_codes(zp, self.bits)
        bias = module.layer.bias
        self.bias = None if bias is None else bias.detach().float().clone()
        level = getattr(fq, "accuracy_level", 0) if accuracy_level is None else accuracy_level
        self.accuracy_level = int(level)

    @property
    def size_bytes(self) -> int:
        zp = 0 if self.zero_points is None else self.zero_points.numel()
        return self.packed.numel() + 4 * self.scales.numel() + zp

    def symbolic(self, g: Any, x: Any, reference: Any) -> Any:
        """``MatMulNBits(x, B, scales[, zero_points]) [+ bias]`` (:class:`StandIn` calls it)."""
        y = contrib_node(
            g, "MatMulNBits", x, self.packed, self.scales, self.zero_points,
            K_i=self.K, N_i=self.N, bits_i=self.bits, block_size_i=self.block_size,
            accuracy_level_i=self.accuracy_level,
        )  # fmt: skip
        if self.bias is not None:
            y = g.op("Add", y, g.op("Constant", value_t=self.bias))
        return y


class NBitsLinear(StandIn):
    """Stands in for a weight-only :class:`QuantLinear` during export: same output, one ``MatMulNBits``."""

    def __init__(self, quant_layer: nn.Module, weight: NBitsWeight) -> None:
        super().__init__(quant_layer, weight)


def nbits_problem(module: nn.Module) -> str | None:
    """Why a weight-only :class:`QuantLinear` cannot become ``MatMulNBits`` (None: it can)."""
    from netcompress.quantization.kernel_calls import has_own_forward

    fq = module.weight_fq
    if fq is None or not fq.quantizing:
        return "weight not quantized"
    if fq.bits not in CONTAINER_BITS:
        return f"{fq.bits}-bit weight: MatMulNBits holds 2-8 bits"
    if has_own_forward(module.layer):
        return f"{type(module.layer).__name__} has its own forward (exported as float QDQ)"
    if fq.spec.granularity == "per_channel" and fq.spec.axis != 0:
        return f"weight quantized along axis {fq.spec.axis}, MatMulNBits scales rows"
    return None


def swap_nbits_linears(
    model: nn.Module, *, accuracy_level: int | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Replace (IN PLACE) each weight-only quantized Linear of ``model`` by :class:`NBitsLinear`.

    Only models without activation quantizers (``mode="weight_only"``) are converted; others are
    returned unchanged with ``layers == []``. Returns the model and ``{"layers", "kept_float",
    "container_bits", "packed_bytes"}``.

    Example:
        >>> work, info = swap_nbits_linears(copy.deepcopy(qmodel)); info["packed_bytes"]
    """
    from netcompress.quantization.modules import QuantLayer, quantizers

    info: dict[str, Any] = {"layers": [], "kept_float": {}, "container_bits": {}, "packed_bytes": 0}
    if any(q.role != "weight" or q.dynamic for q in quantizers(model).values()):
        return model, info
    targets = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, QuantLayer) and isinstance(m.layer, nn.Linear)
    ]
    for name, module in targets:
        problem = nbits_problem(module)
        if problem is not None:
            info["kept_float"][name] = problem
            continue
        weight = NBitsWeight(module, accuracy_level=accuracy_level)
        model = replace_module(model, name, NBitsLinear(module, weight))
        info["layers"].append(name)
        info["container_bits"][name] = weight.bits
        info["packed_bytes"] += weight.size_bytes
    return model, info
