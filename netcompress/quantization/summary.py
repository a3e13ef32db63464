"""What a quantized model holds: per-layer bits, estimated weight bytes, and the modules left float.

A wrapped layer whose parent reads its ``weight`` instead of calling it (``nn.MultiheadAttention`` hands
``out_proj.weight`` to its functional forward; WavLM its projections, Mamba ``dt_proj``) computes with the
FLOAT weight: the summary lists it under ``kept_float`` with the reason, not among the quantized ``layers``,
and counts its weight at 4 bytes a parameter. ``nn.MultiheadAttention``'s children are known; others are
found by running ``inputs`` (when given) and seeing which wrappers are never called.

Example:
    >>> quantization_summary(qmodel)["weight_bytes"], float_modules(qmodel)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netcompress.core.inputs import call_model, move_inputs
from netcompress.quantization.embeddings import QuantEmbedding
from netcompress.quantization.modules import QuantFilterBank, QuantLayer, is_quantizable, quantizers

# modules holding a weight quantizer and the float layer it rounds (``.layer``)
QUANTIZED_HOLDERS = (QuantLayer, QuantFilterBank, QuantEmbedding)
READ_BY_PARENT = (
    "its parent (nn.MultiheadAttention) reads its float weight instead of calling it: runs in float"
)
NOT_CALLED = (
    "not called on the example (its parent reads its weight directly, or a branch skips it): runs in float"
)


def float_by_parent(model: nn.Module, inputs: Any = None) -> dict[str, str]:
    """``{name: reason}`` of the weight holders whose quantized forward does not run: children of an
    ``nn.MultiheadAttention``, and (with ``inputs``) every holder a forward on ``inputs`` never calls.

    Example:
        >>> float_by_parent(nc.quantize(nn.TransformerEncoderLayer(16, 2), loader))
        {'self_attn.out_proj': "its parent (nn.MultiheadAttention) reads its float weight ..."}
    """
    holders = {n: m for n, m in model.named_modules() if isinstance(m, QUANTIZED_HOLDERS)}
    found = {
        f"{p}.{c}" if p else c: READ_BY_PARENT
        for p, parent in model.named_modules()
        if isinstance(parent, nn.MultiheadAttention)
        for c, child in parent.named_children()
        if isinstance(child, QUANTIZED_HOLDERS)
    }
    if inputs is None or not holders:
        return found
    called: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: called.add(n)) for n, m in holders.items()]
    qs = list(quantizers(model).values())
    observing, training = [q.observing for q in qs], model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for q in qs:  # the probe changes no range
            q.observing = False
        model.eval()
        with torch.no_grad():
            call_model(model, move_inputs(inputs, device))
    finally:
        for h in hooks:
            h.remove()
        for q, flag in zip(qs, observing):
            q.observing = flag
        model.train(training)
    return {**{n: NOT_CALLED for n in holders if n not in called}, **found}


def quantization_summary(model: nn.Module, *, inputs: Any = None) -> dict[str, Any]:
    """Per-layer bits and the estimated weight bytes of a quantized model (JSON-able).

    ``weight_bytes`` = sum over quantized weights of ``params * bits / 8`` plus 4 bytes per scale
    and 4 per zero point (as stored by ``save_quantized``), plus 4 bytes per remaining float parameter (biases, float layers).
    ``not_quantizable``: ``{name: type}`` of layers holding weight matrices that stay float because no wrapper
    takes their type (``nn.LSTM``, ``ConvTranspose2d``, an ``nn.Embedding`` left float).
    ``kept_float``: wrapped layers that compute in float anyway (:func:`float_by_parent`; ``inputs``, e.g.
    a calibration batch, finds those no forward calls).

    Example:
        >>> quantization_summary(qmodel)["weight_bytes"]
    """
    layers: dict[str, dict[str, Any]] = {}
    quantized_param_ids: set[int] = set()
    packed_bytes = 0.0
    kept_float = float_by_parent(model, inputs)
    for name, m in model.named_modules():
        if not isinstance(m, QUANTIZED_HOLDERS) or name in kept_float:
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
    # layers with weight matrices no mode quantizes (nn.LSTM/GRU/RNN, ConvTranspose, Embedding tables left float)
    not_quantizable = {
        n: type(m).__name__
        for n, m in model.named_modules()
        if n
        and not is_quantizable(m)
        and not isinstance(m, QUANTIZED_HOLDERS)
        and not any(n.startswith(q + ".") for q in layers)
        and any(p.dim() >= 2 and id(p) not in quantized_param_ids for p in m.parameters(recurse=False))
    }
    return {
        "num_quantized_layers": len(layers),
        "layers": layers,
        "kept_float": kept_float,
        "float_layers": float_layers,
        "not_quantizable": not_quantizable,
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
