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
