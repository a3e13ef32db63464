"""Name the quantized layers an int8 ONNX file still computes in float.

ONNX Runtime fuses ``DequantizeLinear -> Gemm/MatMul/Conv (-> QuantizeLinear)`` into an integer kernel only in
the patterns its QDQ selectors know; otherwise the ``DequantizeLinear`` stays and the layer runs in float on the
dequantized codes (e.g. an eager-wrapped ``nn.Linear`` head with an input quantizer and nothing on its output:
``DQ -> Gemm`` with a float output has no ``QGemm`` fusion). :func:`float_layers` finds those nodes in the
optimised file so that ``export_onnx(int8=True)`` reports them (``float_layers``) and warns when the file has no
integer kernel at all.

Example:
    >>> float_layers("model_int8.onnx")
    [{'layer': 'head', 'op': 'Gemm', 'reason': 'DequantizeLinear -> Gemm with a float output: ...'}]
"""

from __future__ import annotations

import os
from typing import Any

# ops that hold a layer's multiply-accumulate work (the ones an int8 export is meant to run on integers)
COMPUTE_OPS = ("Gemm", "MatMul", "Conv", "ConvTranspose")


def layer_name(node_name: str, op_type: str) -> str:
    """The module path torch's exporter wrote into a node name (``/model/head/Gemm`` -> ``head``); the
    node name itself when it carries no path."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2:
        return node_name or op_type
    parts = parts[:-1]  # the op's own name (Gemm, MatMul_1, ...)
    if parts[0] == "model":  # the export wrapper's attribute holding the user's model
        parts = parts[1:]
    return ".".join(parts) or node_name


def float_layers(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every float ``Gemm``/``MatMul``/``Conv``/``ConvTranspose`` in the ONNX file's main graph fed by a
    ``DequantizeLinear`` (a quantized layer ONNX Runtime did not fuse into an integer kernel), as
    ``{"layer": module path, "op": op type, "reason": why}``, in graph order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for node in graph.node:
        if node.op_type not in COMPUTE_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if not any(getattr(producer.get(i), "op_type", None) == "DequantizeLinear" for i in node.input):
            continue
        after = [c.op_type for out in node.output for c in consumers.get(out, [])]
        if after and all(op == "QuantizeLinear" for op in after):
            reason = f"DequantizeLinear -> {node.op_type} -> QuantizeLinear not fused by ONNX Runtime"
        else:
            reason = (
                f"DequantizeLinear -> {node.op_type} with a float output (no output quantizer): "
                "ONNX Runtime runs it in float"
            )
        found.append({"layer": layer_name(node.name, node.op_type), "op": node.op_type, "reason": reason})
    return found


def no_integer_kernel_message(layers: list[dict[str, Any]]) -> str:
    """The warning ``export_onnx(int8=True)`` gives when the optimised file has no integer kernel."""
    named = "; ".join(f"{f['layer']} ({f['reason']})" for f in layers) or "none found fed by DequantizeLinear"
    return f"int8 export: no integer kernel in the graph; layers left float: {named}"
