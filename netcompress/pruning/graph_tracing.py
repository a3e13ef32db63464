"""Tracing a model into its :class:`~netcompress.pruning.graph.ChannelGraph`: torch.fx with the layer
rules of :mod:`netcompress.pruning.graph_rules` (kept apart from the graph's data structures, which the
rules themselves build on)."""

from __future__ import annotations

import contextlib
import dataclasses
import traceback
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from netcompress.core.errors import UnsupportedModelError
from netcompress.pruning.graph import ChannelGraph, as_inputs, eval_mode, is_prunable_custom
from netcompress.pruning.graph_rules import LEAF_TYPES, label_node
from netcompress.quantization.value_tracing import TypeCheckedTracer, trace_with_values

_LEAF_FORWARDS = {t.forward for t in LEAF_TYPES}


def _keeps_forward(m: nn.Module) -> bool:
    """A subclass of a known layer is that layer only if it keeps its ``forward``.

    One that overrides it (a weight-standardised conv, a channels-first LayerNorm, a GroupNorm fused
    with an activation) is traced into instead, so its real ops are checked: treating it as its base
    class could prune it wrongly.
    """
    return isinstance(m, LEAF_TYPES) and type(m).forward in _LEAF_FORWARDS


class _LeafTracer(TypeCheckedTracer):
    """Keeps standard layers, subclasses that keep their forward, and protocol modules as single
    call_module nodes.

    Protocol modules are found before tracing: during tracing, parameter access returns proxies,
    so a property such as ``out_channels = self.weight.shape[0]`` cannot be evaluated then.
    """

    def __init__(self, protocol_ids: set[int]) -> None:
        super().__init__()
        self.protocol_ids = protocol_ids

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if id(m) in self.protocol_ids or _keeps_forward(m):
            return True
        if isinstance(m, LEAF_TYPES):
            return False
        return super().is_leaf_module(m, module_qualified_name)


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch, so a trace error names the user's line."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} in {f.name}: `{(f.line or '').strip()}`"


@contextlib.contextmanager
def _attributes_restored(model: nn.Module) -> Iterator[None]:
    """Put back every module attribute a traced forward rebinds: a forward that caches a size on its module
    (Swin's ``window_size``) would otherwise keep an fx Proxy there and break the user's model."""
    saved = [(m, dict(vars(m))) for m in model.modules()]
    try:
        yield
    finally:
        for module, attrs in saved:
            for key in [k for k in vars(module) if k not in attrs]:
                delattr(module, key)
            vars(module).update(attrs)


def trace_model(model: nn.Module, example_inputs: Any = None) -> torch.fx.GraphModule:
    """Symbolically trace ``model``; an untraceable model raises UnsupportedModelError naming the line.

    When plain tracing fails and ``example_inputs`` is given, the model is traced again with values
    computed on them (:mod:`netcompress.quantization.value_tracing`), so branches on shapes (the input
    checks of Hugging Face vision models, "same" padding) resolve; branches on tensor data still fail.
    Attributes the forward sets on its modules while traced are put back (the model is not modified).
    """
    with _attributes_restored(model):
        return _trace_model(model, example_inputs)


def _trace_model(model: nn.Module, example_inputs: Any) -> torch.fx.GraphModule:
    protocol_ids = {id(m) for m in model.modules() if is_prunable_custom(m)}
    tracer = _LeafTracer(protocol_ids)
    try:
        graph = tracer.trace(model)
        return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError... for dynamic code
        error = f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}){_user_frame(exc)}"
        if example_inputs is None:
            raise UnsupportedModelError(
                f"{error}; channel pruning needs a traceable forward (no data-dependent if/for on tensor values)"
            ) from exc

    class _Bound(_LeafTracer):
        def __init__(self) -> None:
            super().__init__(protocol_ids)

    try:
        graph, root = trace_with_values(model, example_inputs=example_inputs, tracer_class=_Bound)
    except Exception as exc2:
        raise UnsupportedModelError(
            f"{error}; with values on the example input: {type(exc2).__name__}: {exc2}{_user_frame(exc2)}; "
            "channel pruning needs a traceable forward (no data-dependent if/for on tensor values)"
        ) from exc2
    for node in graph.nodes:  # string annotations break pickling the GraphModule
        node.type = None
    try:  # a submodule named like a GraphModule attribute (`meta`, `graph`) cannot be copied in
        return torch.fx.GraphModule(root, graph, type(model).__name__)
    except TypeError as exc:
        raise UnsupportedModelError(
            f"cannot rebuild {type(model).__name__} as a torch.fx GraphModule ({exc}); rename a submodule "
            "named like a GraphModule attribute (meta, graph, code)"
        ) from exc


@dataclasses.dataclass
class TracedChannels:
    """The traced module, its :class:`ChannelGraph`, and per fx node the channel ids and channel dim."""

    gm: torch.fx.GraphModule
    graph: ChannelGraph
    env: dict[torch.fx.Node, list[int] | None]
    dims: dict[torch.fx.Node, int]

    def channel_dim(self, node: torch.fx.Node) -> int:
        return self.dims.get(node, 1)


def build_channel_graph(model: nn.Module, example_inputs: Any) -> ChannelGraph:
    """Trace ``model`` and return its :class:`ChannelGraph` (the model is not modified).

    ``example_inputs`` is a tensor or tuple of tensors; a batch of 2 or more avoids ambiguous
    shapes (a batch of 1 cannot tell ``x.squeeze()`` from a channel squeeze).

    Example:
        >>> graph = build_channel_graph(model, torch.randn(2, 3, 32, 32))
        >>> [(g.producers, g.num_units, g.prunable) for g in graph.groups]
    """
    return trace_channels(model, example_inputs).graph


def trace_channels(model: nn.Module, example_inputs: Any) -> TracedChannels:
    """:func:`build_channel_graph` plus the traced module and each node's channel ids (for statistics
    measured on the running graph, e.g. neuron pruning). The GraphModule shares ``model``'s layers.

    Example:
        >>> traced = trace_channels(model, x)
        >>> {n.name: len(ids) for n, ids in traced.env.items() if ids}
    """
    inputs = as_inputs(example_inputs)
    gm = trace_model(model, example_inputs)
    with eval_mode(model), torch.no_grad():
        try:
            ShapeProp(gm).propagate(*inputs)
        except Exception as exc:
            raise UnsupportedModelError(
                f"running {type(model).__name__} on the example inputs failed during shape propagation: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    graph = ChannelGraph()
    # the model's own modules: the GraphModule holds a bare stand-in for a module whose forward was traced
    # into (only its parameters), and a conv subclass's F.conv2d call is mapped back to the real layer
    modules = {**dict(gm.named_modules()), **dict(model.named_modules())}
    env: dict[torch.fx.Node, list[int] | None] = {}
    dims: dict[torch.fx.Node, int] = {}
    for node in gm.graph.nodes:
        env[node] = label_node(node, env=env, graph=graph, modules=modules, dims=dims)
    _block_tied(graph, model)
    graph.finalize()
    return TracedChannels(gm, graph, env, dims)


def _block_tied(graph: ChannelGraph, model: nn.Module) -> None:
    """Keep whole the channels of a layer whose parameter another module shares (a Linear head tied to the
    embedding): slicing one copy would untie them, or change the other module's table."""
    holders: dict[int, dict[int, str]] = {}  # parameter -> {module id: a name}
    for name, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            holders.setdefault(id(param), {}).setdefault(id(module), name)
    modules = dict(model.named_modules())
    for name, layer in graph.layers.items():
        module = modules.get(name)
        for param in module.parameters(recurse=False) if module is not None else ():
            others = sorted(n for m, n in holders.get(id(param), {}).items() if m != id(module))
            if others:
                why = f"layer {name!r} shares its parameters with {others[0]!r} (tied weights)"
                graph.block(layer.in_labels, why)
                graph.block(layer.out_labels, why)
                break
