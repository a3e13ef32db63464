"""torch.fx tracing for quantization passes, and how those passes classify graph nodes.

The tracer keeps every Conv/Linear/BatchNorm (including user subclasses), every filter-bank
layer (a module with ``filters()``) and every quantized wrapper as a single ``call_module`` node,
so passes can replace them. Nodes are classified as ReLU-like (absorbed by a uint8 quantizer
with zero point 0), pass-through (their output stays on the input's quantization grid: max
pooling, padding, reshapes) or other float ops.

Example:
    >>> gm = trace_for_quantization(model)
    >>> [n.target for n in gm.graph.nodes if n.op == "call_module"]
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.quantization.fake_quant import FakeQuantize
from netcompress.quantization.modules import QuantFilterBank, QuantLayer, is_quantizable
from netcompress.quantization.value_tracing import TypeCheckedTracer, trace_with_values

_LEAF_TYPES = (nn.modules.batchnorm._BatchNorm, QuantLayer, QuantFilterBank, FakeQuantize)

RELU_MODULES = (nn.ReLU, nn.ReLU6)
RELU_FUNCTIONS = {F.relu, torch.relu, F.relu6, torch.relu_}
RELU_METHODS = {"relu", "relu_"}

# ops whose output values are a subset (or rearrangement) of their input's values, plus zeros:
# a tensor on a quantization grid stays on it, so no new quantizer is needed after them
PASS_THROUGH_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
)
PASS_THROUGH_FUNCTIONS = {
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool2d,
    torch.flatten,
    F.dropout,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    operator.getitem,
}
PASS_THROUGH_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "permute"}


class QuantTracer(TypeCheckedTracer):
    """fx tracer that keeps quantizable layers, BatchNorm and quantizers as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if is_quantizable(m) or isinstance(m, _LEAF_TYPES):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace_for_quantization(model: nn.Module, *, example_inputs: Any = None) -> fx.GraphModule:
    """Symbolically trace ``model`` (a copy is not made: the GraphModule shares its submodules).

    When plain tracing fails and ``example_inputs`` is given, the model is traced again with
    values computed on them, so branches on shapes (input checks, "same" padding) resolve
    (:mod:`netcompress.quantization.value_tracing`). Raises :class:`UnsupportedModelError`
    naming the model and the tracing failure (data-dependent control flow, unsupported ops).

    Example:
        >>> gm = trace_for_quantization(copy.deepcopy(model))
    """
    tracer = QuantTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types; the message is what the user needs
        error = f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}"
        if example_inputs is None:
            raise UnsupportedModelError(error) from exc
        try:
            graph, _ = trace_with_values(model, example_inputs=example_inputs, tracer_class=QuantTracer)
        except Exception as exc2:
            raise UnsupportedModelError(
                f"{error}; with values on the example input: {type(exc2).__name__}: {exc2}"
            ) from exc2
    for node in graph.nodes:
        # string annotations (``from __future__ import annotations``) break pickling the GraphModule
        node.type = None
    return fx.GraphModule(model, graph, type(model).__name__)


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """ReLU/ReLU6 as a module, a function or a tensor method."""
    if node.op == "call_module":
        return isinstance(module_of(gm, node), RELU_MODULES)
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS
    return node.op == "call_method" and node.target in RELU_METHODS


def is_pass_through(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True when ``node``'s output stays on its first input's quantization grid."""
    if node.op == "call_module":
        return isinstance(module_of(gm, node), PASS_THROUGH_MODULES)
    if node.op == "call_function":
        if node.target is F.pad:
            return node.kwargs.get("value", 0) in (0, None) and (
                len(node.args) < 4 or node.args[3] in (0, None)
            )
        return node.target in PASS_THROUGH_FUNCTIONS
    return node.op == "call_method" and node.target in PASS_THROUGH_METHODS


def describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """A short op name for summaries: module class, function or method name."""
    if node.op == "call_module":
        return type(module_of(gm, node)).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)
