"""``torch.fx`` graph modules as data: the nodes of the graph and the submodules they call.

A quantized model is a ``GraphModule`` whose ``forward`` is generated from its graph; the graph is
written node by node (op, target, arguments) and the module regenerated from it on load. Graph calls
are checked like any other function (see :mod:`netcompress.export.object_codec`), and a method or
attribute name that starts with ``_`` is refused, so a crafted graph cannot reach Python internals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from netcompress.core.errors import CheckpointError
from netcompress.export.allowlist import find_function, function_name

if TYPE_CHECKING:
    from netcompress.export.object_codec import Decoder, Encoder

OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")


def encode_graph_module(gm: fx.GraphModule, encoder: Encoder, where: str) -> dict[str, Any]:
    nodes = []
    for node in gm.graph.nodes:
        target = node.target
        if node.op == "call_function":
            target = function_name(target, f"{where} graph node {node.name}")
        nodes.append(
            {
                "name": node.name,
                "op": node.op,
                "target": target,
                "args": _encode_arg(node.args, encoder, where),
                "kwargs": _encode_arg(node.kwargs, encoder, where),
            }
        )
    # the module's own state, without the generated code and the graph (rebuilt from the nodes)
    skip = {"_graph", "_code", "_lineno_map", "_prologue_start", "_tracer_cls", "_tracer_extras", "meta"}
    kept = {
        k: v
        for k, v in vars(gm).items()
        if k not in skip and (k in _MODULE_HOOKS or not k.endswith("_hooks"))
    }
    state = {k: encoder.encode(v, f"{where}.{k}") for k, v in kept.items()}
    return {"graph": nodes, "class_name": type(gm).__name__, "state": state}


# nn.Module's hook dictionaries (the graph module's own *_hooks lists are fx bookkeeping, not state)
_MODULE_HOOKS = {k for k in vars(nn.Module()) if k.endswith("_hooks")}


def _encode_arg(value: Any, encoder: Encoder, where: str) -> Any:
    if isinstance(value, fx.Node):
        return {"__node__": value.name}
    if isinstance(value, (list, tuple)):
        items = [_encode_arg(v, encoder, where) for v in value]
        return items if isinstance(value, list) else {"__tuple__": items}
    if isinstance(value, dict):
        return {"__dict__": [[k, _encode_arg(v, encoder, where)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"__slice__": [_encode_arg(v, encoder, where) for v in (value.start, value.stop, value.step)]}
    return encoder.encode(value, where)


def decode_graph_module(entry: dict[str, Any], decoder: Decoder) -> fx.GraphModule:
    root = nn.Module()
    state = {k: decoder.decode(v) for k, v in entry["state"].items()}
    root.__dict__.update(state)
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for spec in entry["graph"]:
        op, target, name = spec["op"], spec["target"], spec["name"]
        if op not in OPS:
            raise CheckpointError(f"graph node {name!r} has unknown op {op!r}")
        if op == "call_function":
            target = find_function(target)
        elif (
            not isinstance(target, str) or "__" in target or (op == "call_method" and target.startswith("_"))
        ):
            raise CheckpointError(f"graph node {name!r} names {target!r}, which a saved model may not use")
        args = _decode_arg(spec["args"], env, decoder)
        kwargs = _decode_arg(spec["kwargs"], env, decoder)
        node = graph.create_node(op, target, tuple(args), dict(kwargs), name=name)
        env[name] = node
    try:
        graph.lint()
        return fx.GraphModule(root, graph, class_name=entry.get("class_name", "GraphModule"))
    except Exception as exc:  # fx raises many types for an inconsistent graph
        raise CheckpointError(
            f"the saved graph does not fit its modules: {type(exc).__name__}: {exc}"
        ) from None


def _decode_arg(value: Any, env: dict[str, fx.Node], decoder: Decoder) -> Any:
    if isinstance(value, list):
        return [_decode_arg(v, env, decoder) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        tag, inner = next(iter(value.items()))
        if tag == "__node__":
            if inner not in env:
                raise CheckpointError(f"graph argument refers to node {inner!r} before it is defined")
            return env[inner]
        if tag == "__tuple__":
            return tuple(_decode_arg(v, env, decoder) for v in inner)
        if tag == "__dict__":
            return {k: _decode_arg(v, env, decoder) for k, v in inner}
        if tag == "__slice__":
            return slice(*(_decode_arg(v, env, decoder) for v in inner))
    return decoder.decode(value)
