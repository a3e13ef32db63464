"""How tensor functions and methods move channel ids: the rules by name behind :mod:`graph_rules`.

Every rule receives an fx node whose inputs are already labelled and returns the channel ids of
its output (dim 1), or None for values that are not channel-carrying tensors (sizes, shapes).
``NAMED_RULES`` maps a function's ``__name__`` or a method's name to its rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch import nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.pruning.graph import ChannelGraph

Labels = list[int] | None


@dataclasses.dataclass
class RuleContext:
    env: dict[torch.fx.Node, Labels]
    graph: ChannelGraph
    modules: dict[str, nn.Module]


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _describe(node: torch.fx.Node) -> str:
    target = (
        node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    )
    return f"{node.op} {target!r} (fx node {node.name!r})"


def _fail(node: torch.fx.Node, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"channel pruning cannot handle {_describe(node)}: {why}")


def _flat_nodes(value: Any) -> list[torch.fx.Node]:
    out: list[torch.fx.Node] = []
    torch.fx.node.map_arg(value, lambda n: out.append(n) or n)
    return out


def _fresh_blocked(graph: ChannelGraph, shape: tuple[int, ...] | None) -> Labels:
    """Ids for a tensor not made by a prunable layer (input, constant): they can never be removed."""
    if shape is None or len(shape) < 2:
        return None
    labels = graph.uf.new(shape[1])
    graph.block(labels)
    return labels


def _first(node: torch.fx.Node, ctx: RuleContext) -> tuple[torch.fx.Node, list[int]]:
    arg = node.args[0] if node.args else next(iter(node.kwargs.values()))
    labels = ctx.env.get(arg) if isinstance(arg, torch.fx.Node) else None
    if labels is None:
        raise _fail(node, "its first argument is not a (N, C, ...) tensor")
    return arg, labels


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


# ---------------------------------------------------------------- generic tensor rules
def same_channels(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """Per-channel ops (activations, pooling, dropout, casts): output channel i is input channel i."""
    arg, labels = _first(node, ctx)
    out = _shape(node)
    if out is None or len(out) < 2 or out[0] != _shape(arg)[0] or out[1] != len(labels):
        raise _fail(node, f"expected it to keep the {len(labels)} channels, output shape is {out}")
    return labels


def broadcast_binary(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """add/sub/mul/div/where: operands with the same channels are coupled (residual add, SE scaling)."""
    out = _shape(node)
    if out is None or len(out) < 2:
        raise _fail(node, f"result shape {out} has no channel dimension")
    result: Labels = None
    for arg in _flat_nodes((node.args, node.kwargs)):
        shape, labels = _shape(arg), ctx.env.get(arg)
        if shape is None:
            continue
        padded = (1,) * (len(out) - len(shape)) + shape
        if padded[1] == 1 and out[1] != 1:
            ctx.graph.block(labels)  # a single channel broadcast over all: cannot shrink it
        elif labels is None or len(shape) != len(out):
            # a lower-rank tensor aligned with the channel dim (e.g. a (C,) constant): channels frozen
            result = result or ctx.graph.uf.new(out[1])
            ctx.graph.block(result)
            ctx.graph.block(labels)
        elif result is None:
            result = list(labels)
        else:
            ctx.graph.unite(result, labels, where=_describe(node))
    return result if result is not None else _fresh_blocked(ctx.graph, out)


def concatenate(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out = _shape(node)
    parts = [ctx.env.get(t) if isinstance(t, torch.fx.Node) else None for t in tensors]
    if any(p is None for p in parts) or out is None:
        raise _fail(node, "every concatenated value must be a (N, C, ...) tensor")
    if _norm_dim(dim, len(out)) == 1:
        return [label for part in parts for label in part]
    for part in parts[1:]:
        ctx.graph.unite(parts[0], part, where=_describe(node))
    return list(parts[0])


def _reshape_labels(node: torch.fx.Node, ctx: RuleContext, arg: torch.fx.Node, labels: list[int]) -> Labels:
    """Shape-based rule for view/reshape/flatten/squeeze: keep dim 1, or merge it with following dims."""
    before, after = _shape(arg), _shape(node)
    if after is None or len(after) < 2 or after[0] != before[0]:
        raise _fail(node, f"reshape {before} -> {after} moves the batch or channel dimension")
    if after[1] == before[1]:
        return labels
    for end in range(3, len(before) + 1):
        repeat = math.prod(before[2:end])
        if after[1] == before[1] * repeat:
            # row-major flatten: output feature c*repeat + r comes from channel c (e.g. flatten -> Linear)
            return [label for label in labels for _ in range(repeat)]
    raise _fail(node, f"reshape {before} -> {after} splits or mixes the channel dimension")


def reshape(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    arg, labels = _first(node, ctx)
    sizes = list(node.args[1:]) or list(node.kwargs.get("shape", node.kwargs.get("size", ())))
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    out = _reshape_labels(node, ctx, arg, labels)
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if name in ("view", "reshape") and len(sizes) > 1 and isinstance(sizes[1], int) and sizes[1] != -1:
        # a literal such as x.view(-1, 256 * 4 * 4) bakes in the channel count: never shrink it
        ctx.graph.block(labels)
    return out


def flatten_like(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    arg, labels = _first(node, ctx)
    return _reshape_labels(node, ctx, arg, labels)


def _dims_arg(node: torch.fx.Node, position: int, key: str = "dim") -> Any:
    return node.args[position] if len(node.args) > position else node.kwargs.get(key)


def reduce_spatial(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """mean/sum/amax over spatial dims only (global pooling); reducing N or C is refused."""
    arg, labels = _first(node, ctx)
    dims = _dims_arg(node, 1)
    ndim = len(_shape(arg))
    dims = [dims] if isinstance(dims, int) else dims
    if not dims or any(_norm_dim(d, ndim) in (0, 1) for d in dims):
        raise _fail(node, f"it reduces over dims {dims}, which include the batch or channel dimension")
    return same_channels(node, ctx)


def softmax_like(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    arg, labels = _first(node, ctx)
    dim = _dims_arg(node, 1)
    if dim is None:
        raise _fail(node, "softmax without an explicit dim")
    if _norm_dim(dim, len(_shape(arg))) == 1:
        ctx.graph.block(labels)  # mixes channels; fine only if they are never pruned
    return same_channels(node, ctx)


def reorder_dims(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    arg, labels = _first(node, ctx)
    ndim = len(_shape(arg))
    dims = [d for d in node.args[1:] if isinstance(d, int)]
    if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)):
        dims = list(node.args[1])
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name == "permute":
        moved = [_norm_dim(d, ndim) for d in dims[:2]] != [0, 1]
    else:
        moved = bool({_norm_dim(d, ndim) for d in dims} & {0, 1})
    if moved:
        raise _fail(node, f"it moves the batch or channel dimension (dims {dims})")
    return same_channels(node, ctx)


def index_spatial(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    arg, labels = _first(node, ctx)
    index = node.args[1]
    full = slice(None, None, None)
    if isinstance(index, tuple) and len(index) >= 2 and index[0] == full and index[1] == full:
        return same_channels(node, ctx)
    raise _fail(node, f"indexing {index!r} selects along the batch or channel dimension")


def metadata(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    if _shape(node) is not None:
        raise _fail(node, "it returns a tensor derived from a channel tensor")
    return None


# ---------------------------------------------------------------- layers
# fmt: off
_SAME = (
    "relu", "relu_", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh",
    "hardswish", "hardsigmoid", "hardtanh", "softplus", "softsign", "logsigmoid", "dropout", "dropout1d",
    "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "abs", "neg", "pos", "exp", "log",
    "log1p", "log2", "log10", "sqrt", "rsqrt", "square", "sin", "cos", "sign", "reciprocal", "erf", "floor",
    "ceil", "round", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "contiguous", "clone", "detach",
    "float", "double", "half", "to", "type_as", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d",
    "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "lp_pool1d", "lp_pool2d", "interpolate", "upsample", "pad",
)
_BINARY = (
    "add", "sub", "mul", "div", "truediv", "true_divide", "floordiv", "iadd", "isub", "imul", "itruediv",
    "add_", "sub_", "mul_", "div_", "pow", "maximum", "minimum", "rsub", "where",
)
# fmt: on

# shared by call_function (by __name__) and call_method (by method name)
NAMED_RULES: dict[str, Callable[[torch.fx.Node, RuleContext], Labels]] = {
    **dict.fromkeys(_SAME, same_channels),
    **dict.fromkeys(_BINARY, broadcast_binary),
    **dict.fromkeys(("cat", "concat", "concatenate"), concatenate),
    **dict.fromkeys(("view", "reshape"), reshape),
    **dict.fromkeys(("flatten", "squeeze", "unsqueeze"), flatten_like),
    **dict.fromkeys(("mean", "sum", "amax", "amin", "std", "var", "logsumexp"), reduce_spatial),
    **dict.fromkeys(("softmax", "log_softmax", "softmin"), softmax_like),
    **dict.fromkeys(("transpose", "permute", "swapaxes"), reorder_dims),
    "getitem": index_spatial,
    **dict.fromkeys(("size", "dim", "numel", "getattr", "type", "is_contiguous"), metadata),
}
