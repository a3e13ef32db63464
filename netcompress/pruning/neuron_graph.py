"""Where neuron pruning may cut: trace a simple chain of layers and find each layer's span.

A span is what one prunable layer's output passes through (activation, BatchNorm, pooling, a
flatten) before the next layer consumes it; a residual add, a concat or an unknown op raises
:class:`UnsupportedModelError` naming it (see :mod:`netcompress.pruning.neuron`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import UnsupportedModelError

PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_MODULE_KINDS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    (PRODUCERS, "layer"),
    ((nn.BatchNorm1d, nn.BatchNorm2d), "bn"),
    ((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish), "act"),
    ((nn.Hardtanh, nn.Mish, nn.Softplus), "act"),
    (
        (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
        "pass",
    ),
    (
        (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity),
        "pass",
    ),
    ((nn.Flatten,), "flatten"),
)
_FUNCTION_KINDS: dict[Any, str] = {
    **dict.fromkeys((F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardswish), "act"),
    **dict.fromkeys((torch.sigmoid, torch.tanh, F.sigmoid, F.tanh), "act"),
    **dict.fromkeys((F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.dropout), "pass"),
    **dict.fromkeys((F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.nn.functional.dropout1d), "pass"),
    torch.flatten: "flatten",
}
_METHOD_KINDS = {
    "relu": "act",
    "sigmoid": "act",
    "tanh": "act",
    "flatten": "flatten",
    "view": "flatten",
    "reshape": "flatten",
}
_SHAPE_QUERIES = {("call_method", "size"), ("call_function", getattr)}


@dataclasses.dataclass
class Span:
    """What one prunable layer's output passes through before the next layer consumes it."""

    producer: str
    act_node: str = ""
    bns: list[str] = dataclasses.field(default_factory=list)
    flatten_inner: int = 1  # H*W per channel when a flatten sits between conv and Linear
    act_dim: int = 1
    consumer: str = ""
    problem: str = ""  # why this layer cannot be pruned ("" = it can)
    fatal: bool = False  # the problem is an op we do not understand, not just "nothing to prune"


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        module = modules[node.target]
        for types, kind in _MODULE_KINDS:
            if isinstance(module, types):
                return kind
        return f"module {node.target!r} ({type(module).__name__})"
    if node.op == "call_function":
        return _FUNCTION_KINDS.get(node.target, f"function {getattr(node.target, '__name__', node.target)!r}")
    if node.op == "call_method":
        return _METHOD_KINDS.get(node.target, f"method .{node.target}()")
    return f"{node.op} {node.target!r}"


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r}"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', str(node.target))!r}"
    return f"{node.op} {node.target!r}"


def trace_chain(model: nn.Module) -> tuple[fx.GraphModule, list[fx.Node]]:
    """Trace ``model`` and return its data nodes in order, checking it is a simple chain."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python
        raise UnsupportedModelError(
            f"neuron pruning needs a torch.fx-traceable model; tracing failed: {type(exc).__name__}: {exc}"
        ) from exc
    meta: set[fx.Node] = set()
    for node in gm.graph.nodes:
        inputs = node.all_input_nodes
        if (node.op, node.target) in _SHAPE_QUERIES or (
            inputs and all(i in meta for i in inputs) and node.op != "output"
        ):
            meta.add(node)
    chain = [n for n in gm.graph.nodes if n not in meta and n.op not in ("placeholder", "output", "get_attr")]
    for node in chain:
        data_in = [i for i in node.all_input_nodes if i not in meta and i.op != "get_attr"]
        data_out = [u for u in node.users if u not in meta]
        if len(data_in) != 1 or len(data_out) != 1:
            what = _describe(node)
            raise UnsupportedModelError(
                f"neuron pruning needs a simple chain of layers, but {what} (node {node.name!r}) has "
                f"{len(data_in)} tensor inputs and {len(data_out)} users (residual/branching models: "
                "use prune_channels)"
            )
    return gm, chain


def spans_of(gm: fx.GraphModule, chain: list[fx.Node]) -> dict[str, Span]:
    modules = dict(gm.named_modules())
    spans: dict[str, Span] = {}
    for i, node in enumerate(chain):
        if _kind(node, modules) != "layer":
            continue
        span = spans.setdefault(node.target, Span(producer=node.target))
        if span.act_node or span.problem:
            span.problem, span.fatal = f"layer {node.target!r} is called more than once", True
            continue
        if getattr(modules[node.target], "groups", 1) != 1:
            span.problem = f"layer {node.target!r} is a grouped/depthwise conv"
            continue
        channel_dim = -1 if isinstance(modules[node.target], nn.Linear) else 1
        for nxt in chain[i + 1 :]:
            kind = _kind(nxt, modules)
            if kind == "layer":
                if getattr(modules[nxt.target], "groups", 1) != 1:
                    span.problem = f"its consumer {nxt.target!r} is a grouped/depthwise conv"
                span.consumer = nxt.target
                break
            if kind == "bn":
                span.bns.append(nxt.target)
            elif kind == "act" and not span.act_node:
                span.act_node, span.act_dim = nxt.name, channel_dim
            elif kind == "flatten":
                shape = nxt.all_input_nodes[0].meta["tensor_meta"].shape
                out_shape = nxt.meta["tensor_meta"].shape
                if len(out_shape) != 2 or out_shape[1] != math.prod(shape[1:]):
                    span.problem = (
                        f"{nxt.op} {nxt.target!r} (node {nxt.name!r}) is not a flatten to (N, features)"
                    )
                    span.fatal = True
                    break
                if not span.act_node and len(shape) > 2:
                    span.problem = f"the flatten at node {nxt.name!r} comes before the activation"
                    span.fatal = True
                    break
                span.flatten_inner *= math.prod(shape[2:])
            elif kind not in ("act", "pass"):
                span.problem = f"unsupported {kind} (node {nxt.name!r}) between it and the next layer"
                span.fatal = True
                break
        if not span.problem and not span.consumer:
            span.problem = f"layer {node.target!r} is the output layer (no layer consumes it)"
        elif not span.problem and not span.act_node:
            span.problem = f"layer {node.target!r} has no activation before the next layer"
    return spans
