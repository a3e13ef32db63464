"""What a quantized model holds: per-layer bits, estimated weight bytes, and the modules left float.

Example:
    >>> quantization_summary(qmodel)["weight_bytes"], float_modules(qmodel)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from netcompress.quantization.embeddings import QuantEmbedding
from netcompress.quantization.modules import QuantFilterBank, QuantLayer, is_quantizable, quantizers

# modules holding a weight quantizer and the float layer it rounds (``.layer``)
QUANTIZED_HOLDERS = (QuantLayer, QuantFilterBank, QuantEmbedding)


def quantization_summary(model: nn.Module) -> dict[str, Any]:
    """Per-layer bits and the estimated weight bytes of a quantized model (JSON-able).

    ``weight_bytes`` = sum over quantized weights of ``params * bits / 8`` plus 4 bytes per scale
    and 4 per zero point (as stored by ``save_quantized``), plus 4 bytes per remaining float parameter (biases, float layers).

    Example:
        >>> quantization_summary(qmodel)["weight_bytes"]
    """
    layers: dict[str, dict[str, Any]] = {}
    quantized_param_ids: set[int] = set()
    packed_bytes = 0.0
    for name, m in model.named_modules():
        if not isinstance(m, QUANTIZED_HOLDERS):
            continue
        fq = m.weight_fq
        entry: dict[str, Any] = {"type": type(m.layer).__name__}
        if fq is not None:
            entry.update(weight_bits=fq.bits, granularity=fq.spec.granularity, scheme=fq.spec.scheme)
            if isinstance(m, (QuantLayer, QuantEmbedding)):
                numel = m.layer.weight.numel()
                quantized_param_ids.add(id(m.layer.weight))
                packed_bytes += numel * fq.bits / 8 + fq.scale.numel() * 8
                entry["params"] = numel
        for role in ("input_fq", "output_fq"):
            q = getattr(m, role, None)
            if q is not None:
                entry[role.replace("_fq", "_bits")] = "dynamic" if q.dynamic else q.bits
        layers[name] = entry
    float_params = sum(p.numel() for p in model.parameters() if id(p) not in quantized_param_ids)
    float_layers = [
        n
        for n, m in model.named_modules()
        if n and is_quantizable(m) and not any(n.startswith(q + ".") for q in layers)
    ]
    acts = [q for n, q in quantizers(model).items() if q.role == "activation"]
    return {
        "num_quantized_layers": len(layers),
        "layers": layers,
        "float_layers": float_layers,
        "num_activation_quantizers": len(acts),
        "weight_bytes": int(round(packed_bytes + 4 * float_params)),
        "float_weight_bytes": 4 * sum(p.numel() for p in model.parameters()),
    }


def float_modules(model: nn.Module) -> dict[str, int]:
    """``{type: count}`` of the leaf modules left computing in float (LayerNorm, GELU, Embedding...).

    Functional ops between layers (softmax, attention matmuls, residual adds) stay float too
    unless a graph placement put quantizers around them. Dropout/Identity are not counted.

    Example:
        >>> float_modules(quantize(bert, loader))["LayerNorm"]
        5
    """
    from netcompress.quantization.fake_quant import FakeQuantize

    quantized = [n for n, m in model.named_modules() if isinstance(m, (*QUANTIZED_HOLDERS, FakeQuantize))]
    counts: dict[str, int] = {}
    for name, m in model.named_modules():
        if next(m.children(), None) is not None or isinstance(m, (nn.Dropout, nn.Identity, FakeQuantize)):
            continue
        if any(name == q or name.startswith(q + ".") for q in quantized):
            continue
        counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return dict(sorted(counts.items()))
