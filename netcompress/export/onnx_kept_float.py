"""Keep float, in an int8 ONNX file, the layers the PyTorch model keeps float.

ONNX Runtime (>= 1.20) has a graph transformer, ``WeightBiasQuantization``, that takes every ``Conv`` /
``ConvTranspose`` / ``Gemm`` fed by a per-tensor ``DequantizeLinear`` and quantizes a FLOAT weight initializer
to per-tensor symmetric int8 (and a float bias to int32). A layer the model keeps float (``layers={name:
{"enabled": False}}``, accuracy-aware PTQ's fallbacks, the joint latency search's plan) that sits after a
quantized one therefore became a ``QLinearConv`` in the saved file: the file differed from the model.

The same transformer is what turns our quantized layers' float biases into the int32 codes their fusion
needs, so it cannot simply be switched off. When (and only when) it quantized a kept-float layer,
:func:`keep_float_layers` writes every quantized layer's bias as ONNX Runtime would (int32 codes
``round(b / (s_x * s_w))`` in float32 behind a ``DequantizeLinear``, as constant initializers) and
optimises again with the transformer disabled. Otherwise nothing changes.

ONNX Runtime applies the transformer again whenever it loads such a file (DequantizeLinear -> float Conv is
still there), so the file also carries the metadata ``netcompress.kept_float`` (the layers), and
:func:`~netcompress.export.ort_model.ort_session` (hence :class:`OrtModel`, the export check, the timings)
loads it with ``WeightBiasQuantization`` disabled. Another ONNX Runtime session must pass
``disabled_optimizers=["WeightBiasQuantization"]`` itself to run those layers in float.

Example:
    >>> keep_float_layers("raw_int8.onnx", "model_int8.onnx")
    {'kept_float': ['features.7', 'features.14'], 'warning': None}
"""

from __future__ import annotations

import os
from typing import Any

from netcompress.export.onnx_float_layers import COMPUTE_OPS, layer_name
from netcompress.export.ort_model import KEPT_FLOAT_DISABLES

TRANSFORMER = KEPT_FLOAT_DISABLES
# single-input ops ONNX Runtime moves a DequantizeLinear across (QDQ propagation) before the transformer runs
# a layer still float in the optimised file is one of these ops (CPU fusions keep the weight as input 1)
_FLOAT_OPS = (*COMPUTE_OPS, "FusedConv", "FusedGemm", "FusedMatMul")
_PASS_THROUGH = ("MaxPool", "Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


class _Graph:
    """Producers and initializers of a main graph, with ``Identity`` chains to initializers resolved."""

    def __init__(self, model: Any) -> None:
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.producer = {out: node for node in self.graph.node for out in node.output}

    def initializer(self, name: str) -> Any:
        while name not in self.inits and getattr(self.producer.get(name), "op_type", None) == "Identity":
            name = self.producer[name].input[0]
        return self.inits.get(name)

    def array(self, name: str) -> Any:
        from onnx import numpy_helper

        init = self.initializer(name)
        return None if init is None else numpy_helper.to_array(init)

    def input_dq(self, name: str) -> Any:
        """The ``DequantizeLinear`` ``name`` comes from through pass-through ops (ONNX Runtime moves it down)."""
        node = self.producer.get(name)
        while node is not None and node.op_type in _PASS_THROUGH and node.domain in ("", "ai.onnx"):
            node = self.producer.get(node.input[0])
        return node if node is not None and node.op_type == "DequantizeLinear" else None


def _compute_nodes(graph: Any) -> list[Any]:
    return [
        n for n in graph.node if n.op_type in COMPUTE_OPS and n.domain in ("", "ai.onnx") and len(n.input) > 1
    ]


def float_weight_layers(model: Any) -> dict[str, str]:
    """``{node name: layer}`` of the ``Conv``/``ConvTranspose``/``Gemm``/``MatMul`` whose weight is a float
    initializer (a layer the model keeps float), in graph order."""
    from onnx import TensorProto

    g = _Graph(model)
    found = {}
    for node in _compute_nodes(g.graph):
        init = g.initializer(node.input[1])
        if init is not None and init.data_type == TensorProto.FLOAT:
            found[node.name] = layer_name(node.name, node.op_type)
    return found


def quantized_by_ort(candidates: dict[str, str], optimized_path: str | os.PathLike) -> list[str]:
    """The layers of ``candidates`` (float weights in the raw file) whose weight is no longer a float
    initializer in ONNX Runtime's optimised file (fused into an integer kernel or fed by a ``DequantizeLinear``)."""
    import onnx
    from onnx import TensorProto

    g = _Graph(onnx.load(str(optimized_path), load_external_data=False))
    by_name = {n.name: n for n in g.graph.node}
    quantized = []
    for name, layer in candidates.items():
        node = by_name.get(name)
        if node is None or len(node.input) < 2 or node.op_type not in _FLOAT_OPS:
            quantized.append(layer)  # fused away under another name: count it (rewriting is exact anyway)
            continue
        init = g.initializer(node.input[1])
        if init is None or init.data_type != TensorProto.FLOAT:
            quantized.append(layer)
    return quantized


def _is_scalar(array: Any) -> bool:
    return array.ndim == 0 or (array.ndim == 1 and array.shape[0] == 1)


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def quantize_biases(model: Any) -> tuple[int, list[str]]:
    """Rewrite (IN PLACE) the float bias of every layer whose weight comes from a ``DequantizeLinear`` as
    ONNX Runtime's ``WeightBiasQuantization`` would: ``DequantizeLinear(int32 codes, s_x * s_w)`` (axis 0 when
    per-channel), the codes ``round(b / (s_x * s_w))`` computed in float32 as ONNX Runtime does (Mul, Div,
    Round half to even, Cast). Returns ``(rewritten, layers whose bias could not be rewritten)``."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = _Graph(model)
    names = set(g.inits) | {o for n in g.graph.node for o in n.output}

    def fresh(base: str) -> str:
        while base in names:
            base += "_"
        names.add(base)
        return base

    rewritten, failed, replaced = 0, [], []
    for node in _compute_nodes(g.graph):
        weight_dq = g.producer.get(node.input[1])
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear" or node.op_type == "MatMul":
            continue
        if len(node.input) < 3 or not node.input[2]:
            continue  # no bias: nothing for the transformer to do either
        bias = g.array(node.input[2])
        if bias is None or bias.dtype != np.float32 or bias.ndim != 1:
            continue  # a bias already quantized (or computed) is left as it is, as ONNX Runtime does
        layer = layer_name(node.name, node.op_type)
        input_dq = g.input_dq(node.input[0])
        s_x = None if input_dq is None or len(input_dq.input) < 2 else g.array(input_dq.input[1])
        s_w = g.array(weight_dq.input[1]) if len(weight_dq.input) > 1 else None
        if s_x is None or not _is_scalar(s_x) or s_w is None:
            failed.append(layer)
            continue
        per_tensor = _is_scalar(s_w)
        if not per_tensor:
            expected = 0 if node.op_type != "Gemm" or _attr(node, "transB", 0) else 1
            if s_w.ndim != 1 or s_w.shape[0] != bias.shape[0] or _attr(weight_dq, "axis", 1) != expected:
                continue  # ONNX Runtime leaves these float too
        scale = (s_x.astype(np.float32) * s_w.astype(np.float32)).astype(np.float32)
        codes = np.round(bias.astype(np.float32) / scale).astype(np.int32)
        base = f"{node.input[2]}_int32"
        codes_name, scale_name, out_name = fresh(base), fresh(f"{base}_scale"), fresh(f"{base}_dq")
        g.graph.initializer.extend(
            [numpy_helper.from_array(codes, codes_name), numpy_helper.from_array(scale, scale_name)]
        )
        dq = helper.make_node(
            "DequantizeLinear", [codes_name, scale_name], [out_name], name=fresh(f"{node.name}_bias_dq")
        )
        if not per_tensor:
            dq.attribute.append(helper.make_attribute("axis", 0))
        g.graph.node.insert(list(g.graph.node).index(node), dq)
        replaced.append(node.input[2])
        node.input[2] = out_name
        rewritten += 1
    _drop_unused(g.graph, replaced)
    return rewritten, failed


def _drop_unused(graph: Any, names: list[str]) -> None:
    """Remove the float biases replaced by :func:`quantize_biases` (the ``Identity`` chain and initializer)
    that nothing reads any more, so ONNX Runtime does not log that it removes them. Left alone in a graph
    with subgraphs (which may read outer names)."""
    if any(a.g.node or a.graphs for n in graph.node for a in n.attribute):
        return
    for name in names:
        while name:
            used = any(name in n.input for n in graph.node) or any(o.name == name for o in graph.output)
            if used:
                break
            producer = next((n for n in graph.node if name in n.output), None)
            init = next((i for i in graph.initializer if i.name == name), None)
            if producer is not None and producer.op_type == "Identity":
                graph.node.remove(producer)
                name = producer.input[0]
            elif producer is None and init is not None:
                graph.initializer.remove(init)
                name = ""
            else:
                break


def keep_float_layers(raw: str | os.PathLike, final: str | os.PathLike) -> dict[str, Any]:
    """After ``ort_session(raw, optimized_path=final)``: when ONNX Runtime quantized a layer whose weight is
    float in ``raw``, rewrite the quantized layers' biases in ``raw`` (:func:`quantize_biases`) and write
    ``final`` again with the transformer disabled. ``{"kept_float": layers, "warning": None or a message}``;
    ``final`` and ``raw`` are untouched when no layer was quantized or a bias could not be rewritten."""
    import onnx

    from netcompress.export.ort_model import KEPT_FLOAT_KEY, ort_session

    model = onnx.load(str(raw), load_external_data=False)
    candidates = float_weight_layers(model)
    taken = quantized_by_ort(candidates, final) if candidates else []
    if not taken:
        return {"kept_float": [], "warning": None}
    _, failed = quantize_biases(model)
    if failed:
        return {
            "kept_float": [],
            "warning": (
                f"int8 export: ONNX Runtime quantizes the float layer(s) {', '.join(taken)} to per-tensor int8 in the "
                f"file (its {TRANSFORMER} transformer), and they cannot be kept float: no input scale found for the "
                f"bias of the quantized layer(s) {', '.join(failed)}"
            ),
        }
    onnx.save(model, str(raw))
    ort_session(raw, optimized_path=str(final), disabled_optimizers=[TRANSFORMER])
    # ONNX Runtime would quantize them again when it loads the file: the metadata says to switch it off
    optimized = onnx.load(str(final), load_external_data=False)
    entry = optimized.metadata_props.add()
    entry.key, entry.value = KEPT_FLOAT_KEY, ",".join(taken)
    onnx.save(optimized, str(final))
    return {"kept_float": taken, "warning": None}
