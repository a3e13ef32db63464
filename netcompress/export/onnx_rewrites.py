"""Exact rewrites of a raw QDQ ONNX file before ONNX Runtime optimises it, so that its QDQ fusions apply.

ONNX Runtime fuses ``DequantizeLinear -> op -> QuantizeLinear`` into an integer kernel only when the
``QuantizeLinear`` follows the op directly; it moves a ``QuantizeLinear`` up across a ``Reshape`` (and
``Transpose``, ``Squeeze``...) but not across a ``Flatten``. So the torchvision head ``avgpool ->
torch.flatten(x, 1) -> fc`` exported as ``DQ -> GlobalAveragePool -> Flatten -> Q -> QGemm`` kept a float
``GlobalAveragePool`` between a ``DequantizeLinear`` and a ``QuantizeLinear``, where ONNX Runtime's own
quantizer's file runs ``QLinearGlobalAveragePool`` and flattens the uint8 codes (and EfficientNet-Lite's
``x.view(bs, -1)``, a ``Reshape``, did fuse). :func:`flatten_to_reshape` writes every ``Flatten(axis=1)``
as the identical ``Reshape(shape=[0, -1])``.

Example:
    >>> rewrite_for_qdq_fusion("raw_int8.onnx")
    {'flatten_to_reshape': 1}
"""

from __future__ import annotations

import os
from typing import Any


def flatten_to_reshape(model: Any) -> int:
    """Replace (IN PLACE) each ``Flatten`` with ``axis=1`` of ``model``'s main graph by ``Reshape`` to
    ``[0, -1]`` (dim 0 kept, the rest multiplied: the same output for every input of rank >= 1).
    Returns how many were replaced.

    Example:
        >>> flatten_to_reshape(onnx_model)
        1
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    names = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    replaced = 0
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "Flatten" or node.domain not in ("", "ai.onnx"):
            continue
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        if axis != 1:
            continue
        shape_name = f"{node.name or node.output[0]}_reshape_shape"
        while shape_name in names:
            shape_name += "_"
        names.add(shape_name)
        graph.initializer.append(numpy_helper.from_array(np.array([0, -1], dtype=np.int64), shape_name))
        reshape = helper.make_node(
            "Reshape", [node.input[0], shape_name], list(node.output), name=node.name or None
        )
        graph.node.remove(node)
        graph.node.insert(index, reshape)
        replaced += 1
    return replaced


def rewrite_for_qdq_fusion(path: str | os.PathLike) -> dict[str, int]:
    """Apply the rewrites to the ONNX file at ``path`` (rewritten in place when one applies; external
    weight data is left where it is). Returns ``{rewrite: count}`` of those that applied."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = {"flatten_to_reshape": flatten_to_reshape(model)}
    counts = {k: v for k, v in counts.items() if v}
    if counts:
        onnx.save(model, str(path))
    return counts


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _set_axis(node: Any, axis: int) -> None:
    from onnx import helper

    for a in node.attribute:
        if a.name == "axis":
            a.i = axis
            return
    node.attribute.append(helper.make_attribute("axis", axis))


def float_gemm_to_integer_matmul(model: Any) -> int:
    """Rewrite (IN PLACE) each float ``DQ(x), DQ(W) -> Gemm`` whose output no ``QuantizeLinear`` takes (an
    eager-wrapped Linear: an input quantizer, none on its output) as ``Unsqueeze -> MatMul -> Add(bias) ->
    Squeeze`` with ``W`` stored transposed: the same values, in a pattern ONNX Runtime fuses into
    ``MatMulIntegerToFloat`` (``DQ -> Gemm`` with a float output has no integer fusion, and a 2-D ``MatMul +
    Add`` is fused back into that ``Gemm`` first). Only a weight held by one initializer that only this Gemm
    reads (through ``DQ`` or ``Q -> DQ``) is rewritten. Returns how many were rewritten.

    Example:
        >>> float_gemm_to_integer_matmul(onnx_model)
        1
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    uses: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            uses.setdefault(i, []).append(n)
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 13:
        return 0  # Unsqueeze/Squeeze take their axes as an input from opset 13
    names = set(inits) | set(producer)

    def fresh(base: str) -> str:
        while base in names:
            base += "_"
        names.add(base)
        return base

    rewritten = 0
    for node in list(graph.node):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0 or _attr(node, "transA", 0):
            continue
        dq_x, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
        if getattr(dq_x, "op_type", None) != "DequantizeLinear" or getattr(dq_w, "op_type", None) != "DequantizeLinear":
            continue
        if any(c.op_type == "QuantizeLinear" for c in uses.get(node.output[0], [])):
            continue  # DQ -> Gemm -> Q: ONNX Runtime's own QGemm fusion
        chain = [dq_w]
        source = producer.get(dq_w.input[0])
        if getattr(source, "op_type", None) == "QuantizeLinear":
            chain.append(source)
        weight = inits.get(chain[-1].input[0])
        if weight is None or weight.data_location == TensorProto.EXTERNAL or len(weight.dims) != 2:
            continue
        if any(len(uses.get(n.output[0], [])) != 1 for n in chain) or len(uses.get(weight.name, [])) != 1:
            continue
        scale = inits.get(dq_w.input[1])
        if scale is None:
            continue
        if _attr(node, "transB", 0):  # store W^T so that MatMul reads it as (in, out); a per-row scale moves to axis 1
            weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), weight.name))
            if int(np.prod(scale.dims)) > 1:
                for n in chain:
                    _set_axis(n, 1)
        out = node.output[0]
        axes = fresh(f"{out}_unsqueeze_axes")
        graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), axes))
        x3, y3, b3 = fresh(f"{out}_x3"), fresh(f"{out}_mm"), fresh(f"{out}_biased")
        has_bias = len(node.input) > 2 and node.input[2]
        new = [
            helper.make_node("Unsqueeze", [node.input[0], axes], [x3], name=fresh(f"{node.name}_Unsqueeze")),
            helper.make_node("MatMul", [x3, node.input[1]], [y3], name=fresh(f"{node.name}_MatMul")),
        ]
        if has_bias:
            new.append(helper.make_node("Add", [y3, node.input[2]], [b3], name=fresh(f"{node.name}_Add")))
        new.append(helper.make_node("Squeeze", [b3 if has_bias else y3, axes], [out], name=fresh(f"{node.name}_Squeeze")))
        index = list(graph.node).index(node)
        graph.node.remove(node)
        for k, n in enumerate(new):
            graph.node.insert(index + k, n)
        rewritten += 1
    return rewritten


def rewrite_float_gemms(path: str | os.PathLike) -> int:
    """:func:`float_gemm_to_integer_matmul` on the ONNX file at ``path`` (rewritten in place when it applies)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    count = float_gemm_to_integer_matmul(model)
    if count:
        onnx.save(model, str(path))
    return count


def positive_transpose_perms(path: str | os.PathLike) -> int:
    """Rewrite (IN PLACE, on the file) every ``Transpose`` whose ``perm`` holds negative dims as the same
    permutation with non-negative ones; returns how many changed.

    torch's exporter writes ``x.permute(0, -2, -1, 1)`` as is (transformers' Mamba-2 mixer), and ONNX Runtime
    refuses to load it (``Invalid attribute perm {0, -2, -1, 1}``). The rank is the perm's length.

    Example:
        >>> positive_transpose_perms("mamba2.onnx")
        2
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    graphs, changed = [model.graph], 0
    while graphs:  # the main graph and the bodies of If / Loop / Scan nodes
        graph = graphs.pop()
        for node in graph.node:
            graphs += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
            perm = _attr(node, "perm", None) if node.op_type == "Transpose" else None
            if perm is not None and any(p < 0 for p in perm):
                kept = [a for a in node.attribute if a.name != "perm"]
                del node.attribute[:]
                node.attribute.extend([*kept, helper.make_attribute("perm", [p % len(perm) for p in perm])])
                changed += 1
    if changed:
        onnx.save(model, str(path))
    return changed
