"""Where an ONNX file first departs from the PyTorch model it was exported from.

When ``export_onnx(check=True)`` finds the ONNX Runtime output too far from PyTorch's,
:func:`first_divergence` runs a copy of the file with its intermediate tensors added as graph
outputs and compares each with the output of the PyTorch module that produced it, in the graph's
topological order; the first whose relative difference (max abs difference over the max abs
PyTorch value) exceeds the tolerance is the first diverging node.

Tensors are matched to modules by name. The TorchScript exporter names every value
``<scope>/<Op>_output_<i>``, where the scope is the chain of module calls that emitted the node,
each call named by its unqualified module name (``encoder.layer.0.output.dense`` -> ``dense``;
``features.3`` stays ``features.3``), the n-th repeat of one scope suffixed ``_n``. The module
calls of a PyTorch forward, recorded with hooks, rebuild the same scopes. ONNX Runtime's fusions
keep the name of a fused pattern's last value, so an int8 file still holds tensors such as
``/model/_0_out/QuantizeLinear_output_0``, the output of the activation quantizer ``_0_out``;
int8 tensors are dequantized with their producer's scale and zero point. A module output is
compared with the last tensor of its scope of the same shape; tensors no module produced are not
compared.

Example:
    >>> found = first_divergence(model, "m.onnx", x, tolerance=0.05)
    >>> found["node"], found["module"], found["rel_diff"]
    ('/model/model.2/model.2.1/Mul', '2.1', 0.5)
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.export.onnx_inputs import ExportCall, input_spec, ort_feed
from netcompress.export.ort_model import KEPT_FLOAT_DISABLES, KEPT_FLOAT_KEY

# op type -> input positions of its output scale and zero point (int8 outputs are dequantized)
OUTPUT_QPARAMS = {
    "QuantizeLinear": (1, 2),
    "QLinearConv": (6, 7),
    "QLinearMatMul": (6, 7),
    "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7),
    "QGemm": (7, 8),
    "QLinearAveragePool": (3, 4),
    "QLinearGlobalAveragePool": (3, 4),
    "QLinearSigmoid": (3, 4),
    "QLinearLeakyRelu": (3, 4),
    "QLinearSoftmax": (3, 4),
    "QLinearConcat": (0, 1),
}
_VALUE = re.compile(r"^(?P<scope>/.*)/[^/]+_output_\d+$")
_REPEAT = re.compile(r"^(?P<base>.*)_(?P<n>\d+)$")


def _unqualified(name: str) -> str:
    """The exporter's scope name of a module (torch.onnx's ``_unqualified_variable_name``)."""
    atoms = name.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return name


@dataclasses.dataclass
class ModuleCall:
    """One call of a module in a PyTorch forward: its name, output (None: not a float tensor), caller."""

    module: str
    output: torch.Tensor | None
    parent: int | None  # index of the calling module's call
    kind: str = ""  # the module's class name


def module_calls(
    call: nn.Module, tensors: Sequence[torch.Tensor]
) -> tuple[list[ModuleCall], dict[str, list[int]]]:
    """Every module call of ``call(*tensors)`` and ``{scope: [call index, ...]}`` in call order.

    ``call`` is the exported wrapper (:class:`ExportCall`); module names are given relative to the
    user's model (``call.model``).
    """
    names = {id(m): n for n, m in call.named_modules()}
    stack: list[tuple[str, int]] = []  # (scope name, call index)
    calls: list[ModuleCall] = []
    scopes: dict[str, list[int]] = {}

    def pre(module: nn.Module, args: Any) -> None:
        qualified = names.get(id(module), "")
        parent = stack[-1][1] if stack else None
        calls.append(
            ModuleCall(qualified.removeprefix("model").lstrip("."), None, parent, type(module).__name__)
        )
        stack.append((_unqualified(qualified), len(calls) - 1))
        scopes.setdefault("/".join(name for name, _ in stack), []).append(len(calls) - 1)

    def post(module: nn.Module, args: Any, output: Any) -> None:
        _, index = stack.pop()
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            # copied: a later in-place op (ReLU(inplace=True)) would change it
            calls[index].output = output.detach().clone()

    handles = []
    for module in call.modules():
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        with torch.no_grad():
            call(*tensors)
    finally:
        for h in handles:
            h.remove()
    return calls, scopes


def _lookup(scopes: dict[str, list[int]], scope: str) -> int | None:
    """The module call behind an exported scope (``.../dense_2``: the third call of ``.../dense``)."""
    if scope in scopes:
        return scopes[scope][0]
    repeat = _REPEAT.match(scope)
    if repeat and repeat["base"] in scopes and int(repeat["n"]) < len(scopes[repeat["base"]]):
        return scopes[repeat["base"]][int(repeat["n"])]
    return None


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _dequantize(node: Any, value: np.ndarray, constants: dict[str, np.ndarray]) -> np.ndarray | None:
    if value.dtype.kind == "f":
        return value.astype(np.float32)
    where = OUTPUT_QPARAMS.get(node.op_type)
    if where is None or value.dtype not in (np.uint8, np.int8) or max(where) >= len(node.input):
        return None
    scale, zero = (constants.get(node.input[i]) for i in where)
    if scale is None:
        return None
    zero = np.zeros_like(scale) if zero is None else zero
    if scale.size > 1:  # per-axis: along ``axis`` (default 1)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * value.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((value.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)).astype(
        np.float32
    )


def first_divergence(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: Any,
    *,
    tolerance: float,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """The first graph tensor (topological order) further than ``tolerance`` from its PyTorch module.

    Returns ``{"node", "op_type", "tensor", "module", "rel_diff", "compared", "exceeds"}``, or None
    when no tensor could be matched to a module. When none exceeds the tolerance (error that builds
    up over many nodes), the tensor with the largest difference is returned with ``exceeds=False``.

    Example:
        >>> first_divergence(qmodel, "q.onnx", x, tolerance=0.05)["node"]
        '/model/model.3/Conv'
    """
    import onnx
    import onnxruntime as ort

    spec = input_spec(example_inputs, input_names)
    calls, scopes = module_calls(ExportCall(model.eval(), spec, output_names), spec.tensors)
    proto = onnx.load(str(path))
    graph = proto.graph
    constants = _constants(graph)
    # the output of a call is the last tensor (topological order) made in it or in the calls it
    # made, with the call's output shape: every tensor counts for its call and that call's callers
    owner: dict[int, tuple[Any, str]] = {}  # call index -> (node, tensor name)
    order: dict[str, int] = {}
    for node in graph.node:
        for name in node.output:
            match = _VALUE.match(name)
            index = _lookup(scopes, match["scope"]) if match and name not in constants else None
            order.setdefault(name, len(order))
            while index is not None:
                owner[index] = (node, name)
                index = calls[index].parent
    if not owner:
        return None
    present = {o.name for o in graph.output}
    for name in {name for _, name in owner.values()} - present:
        graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    # a file with layers kept float runs as ort_session runs it (ORT would quantize them at load)
    kept = any(p.key == KEPT_FLOAT_KEY for p in proto.metadata_props)
    extra = {"disabled_optimizers": [KEPT_FLOAT_DISABLES]} if kept else {}
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"], **extra)
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, ort_feed(session, spec.names, list(spec.tensors)))))
    # tensor -> the innermost call it is the output of (calls are recorded outer first)
    outputs: dict[str, int] = {}
    for index in sorted(owner):
        name, ref = owner[index][1], _reference(calls, index, owner)
        if ref is not None and name in values and tuple(values[name].shape) == tuple(ref.shape):
            outputs[name] = index
    producers = {out: node for node in graph.node for out in node.output}
    worst: dict[str, Any] | None = None
    for name in sorted(outputs, key=order.__getitem__):
        node, call = owner[outputs[name]][0], calls[outputs[name]]
        got = _dequantize(node, values[name], constants)
        if got is None:
            continue
        reference = _reference(calls, outputs[name], owner).float().numpy()
        peak = float(np.abs(reference).max()) if reference.size else 0.0
        rel = float(np.abs(got - reference).max()) / max(peak, 1e-12) if reference.size else 0.0
        # a DequantizeLinear only rescales: the node that computed the codes is the one to name
        source = producers.get(node.input[0], node) if node.op_type == "DequantizeLinear" else node
        found = {
            "node": source.name,
            "op_type": source.op_type,
            "tensor": name,
            "module": call.module,
            "rel_diff": rel,
        }
        if rel > tolerance:
            return {**found, "compared": len(outputs), "exceeds": True}
        if worst is None or rel > worst["rel_diff"]:
            worst = found
    return None if worst is None else {**worst, "compared": len(outputs), "exceeds": False}


def _reference(calls: list[ModuleCall], index: int, owner: dict[int, Any]) -> torch.Tensor | None:
    """The PyTorch value a call's ONNX tensor holds: a conv's BatchNorm is folded into the ONNX ``Conv`` on export
    (the BatchNorm's own scope holds no node), so that ``Conv`` holds the BatchNorm's output."""
    call, after = calls[index], calls[index + 1] if index + 1 < len(calls) else None
    folded = (
        after is not None and call.kind.startswith("Conv") and after.kind.startswith("BatchNorm")
        and after.parent == call.parent and index + 1 not in owner and after.output is not None
    )  # fmt: skip
    return after.output if folded else call.output


def percent(fraction: float) -> str:
    """``0.05`` -> ``5.0%``; small fractions keep two significant digits (the float check's 1e-4 -> ``0.01%``)."""
    return f"{fraction:.1%}" if fraction >= 0.01 else f"{fraction * 100:.2g}%"


def divergence_note(found: dict[str, Any] | None, tolerance: float) -> str:
    """One sentence for an error message (``first diverging node: ... (module ...), 28.0% off``)."""
    if found is None:
        return "no intermediate tensor could be matched to a PyTorch module"
    where = f"{found['node']} ({found['op_type']}, module {found['module'] or '<root>'}), {percent(found['rel_diff'])} off"
    if found["exceeds"]:
        return f"first diverging node: {where}"
    return (
        f"no single node of {found['compared']} compared is {percent(tolerance)} off (the difference builds up); "
        f"largest: {where}"
    )
