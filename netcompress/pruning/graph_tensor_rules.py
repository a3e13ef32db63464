"""How tensor functions and methods move channel ids: the rules by name behind :mod:`graph_rules`.

Every rule receives an fx node whose inputs are already labelled and returns the channel ids of
its output, or None for values that are not channel-carrying tensors (sizes, shapes). The ids run
along the tensor's *channel dim*, ``ctx.dims[node]`` (1 unless a permute/transpose or a Linear on
``(N, L, C)`` moved it); a rule that moves it records the new dim, otherwise the output keeps its
first labelled input's channel dim. ``NAMED_RULES`` maps a function's ``__name__`` or a method's
name to its rule.
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
    dims: dict[torch.fx.Node, int] = dataclasses.field(default_factory=dict)

    @property
    def pieces(self) -> dict[torch.fx.Node, list[list[int]]]:
        """Each split/chunk node's pieces (kept on the graph: a context lives for one node)."""
        return self.graph.pieces

    def dim(self, node: torch.fx.Node) -> int:
        """The channel dim of a labelled value (1 for inputs, constants and conv outputs)."""
        return self.dims.get(node, 1)

    def labels_on(self, node: torch.fx.Node, user: torch.fx.Node, dim: int) -> list[int]:
        """``node``'s channel ids along ``dim``; a value whose channels are all blocked (an input, a
        constant) may be read along any dim, others only along their channel dim."""
        labels, shape = self.env.get(node), _shape(node)
        dim = _norm_dim(dim, len(shape))
        if labels is not None and self.dim(node) == dim:
            return labels
        if labels is None or self.graph.is_blocked(labels):
            fresh = self.graph.uf.new(shape[dim])
            self.graph.block(fresh)
            return fresh
        raise _fail(user, f"it uses dim {dim} of {node.name!r}, whose channels are on dim {self.dim(node)}")


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _describe(node: torch.fx.Node) -> str:
    target = (
        node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    )
    return f"{node.op} {target!r} (fx node {node.name!r})"


def _fail(node: torch.fx.Node, why: str) -> UnsupportedModelError:
    stack = node.meta.get("nn_module_stack") or {}
    inside = ""
    if stack and node.op != "call_module":  # an op traced inside a module's forward: name that module
        path, cls = list(stack.values())[-1]
        inside = f" inside module {path!r} ({getattr(cls, '__name__', cls)})"
    return UnsupportedModelError(f"channel pruning cannot handle {_describe(node)}{inside}: {why}")


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
    out, dim = _shape(node), ctx.dim(arg)
    if out is None or len(out) != len(_shape(arg)) or out[0] != _shape(arg)[0] or out[dim] != len(labels):
        raise _fail(node, f"expected it to keep the {len(labels)} channels, output shape is {out}")
    return labels


def _channel_dim(ctx: RuleContext, node: torch.fx.Node, args: list[torch.fx.Node]) -> int:
    """The result's channel dim: that of the first full-rank operand whose channels are not all blocked."""
    out = _shape(node)
    full = [a for a in args if ctx.env.get(a) is not None and len(_shape(a)) == len(out)]
    live = [a for a in full if not ctx.graph.is_blocked(ctx.env[a])]
    dim = ctx.dim((live or full)[0]) if full else 1
    ctx.dims[node] = dim
    return dim


# F.pad that changes the channel count: graph_channel_pad builds on this module's helpers and registers its rule
# here on import (graph_rules imports it), so the two files do not import each other
CHANNEL_PAD: list[Callable[[torch.fx.Node, RuleContext, Labels], Labels]] = []


def spatial_channels(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """Pooling, padding, resizing: they treat dim 1 as channels and the dims after it as space."""
    arg, labels = _first(node, ctx)
    if ctx.dim(arg) != 1 and not ctx.graph.is_blocked(labels):
        raise _fail(node, f"it treats dim 1 as channels, but the channels are on dim {ctx.dim(arg)}")
    out = _shape(node)
    if getattr(node.target, "__name__", node.target) == "pad" and out and out[1:2] != (len(labels),):
        if not CHANNEL_PAD:  # registered by graph_channel_pad, which graph_rules imports
            raise _fail(node, "it pads the channel dim (netcompress.pruning.graph_channel_pad is not loaded)")
        return CHANNEL_PAD[0](node, ctx, labels)
    return same_channels(node, ctx)


def broadcast_binary(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """add/sub/mul/div/where: operands with the same channels are coupled (residual add, SE scaling)."""
    out = _shape(node)
    if out is None or len(out) < 2:
        raise _fail(node, f"result shape {out} has no channel dimension")
    args = [a for a in _flat_nodes((node.args, node.kwargs)) if _shape(a) is not None]
    dim = _channel_dim(ctx, node, args)
    result: Labels = None
    for arg in args:
        shape, labels = _shape(arg), ctx.env.get(arg)
        padded = (1,) * (len(out) - len(shape)) + shape
        if padded[dim] == 1 and out[dim] != 1:
            ctx.graph.block(labels)  # a single channel broadcast over all: cannot shrink it
        elif labels is None or len(shape) != len(out):
            # a lower-rank tensor aligned with the channel dim (e.g. a (C,) constant): channels frozen
            result = result or ctx.graph.uf.new(out[dim])
            ctx.graph.block(
                result, f"{_describe(node)} combines them with a per-channel constant or parameter"
            )
            ctx.graph.block(labels)
        elif result is None:
            result = list(ctx.labels_on(arg, node, dim))
        else:
            ctx.graph.unite(result, ctx.labels_on(arg, node, dim), where=_describe(node))
    if result is None:
        result = ctx.graph.uf.new(out[dim])
        ctx.graph.block(result)
    return result


def concatenate(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    cat_dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out = _shape(node)
    if out is None or any(not isinstance(t, torch.fx.Node) or ctx.env.get(t) is None for t in tensors):
        raise _fail(node, "every concatenated value must be a (N, C, ...) tensor")
    dim = _channel_dim(ctx, node, list(tensors))
    parts = [ctx.labels_on(t, node, dim) for t in tensors]
    if _norm_dim(cat_dim, len(out)) == dim:
        return [label for part in parts for label in part]
    for part in parts[1:]:
        ctx.graph.unite(parts[0], part, where=_describe(node))
    return list(parts[0])


def _reshape_labels(node: torch.fx.Node, ctx: RuleContext, arg: torch.fx.Node, labels: list[int]) -> Labels:
    """Shape-based rule for view/reshape/flatten/squeeze: keep the channel dim, or merge it with following dims.

    Row-major reshapes keep a channel's coordinate when every dim up to the channel dim is unchanged
    (``(N, C, H, W) -> (N, C, H*W)``) or every dim from it on is (``(N, H, W, C) -> (N, H*W, C)``);
    merging it with the dims after it repeats each id (``(N, C, H, W) -> (N, C*H*W)`` before a Linear).
    """
    before, after, dim = _shape(arg), _shape(node), ctx.dim(arg)
    if after is None or len(after) < 2 or after[0] != before[0]:
        raise _fail(node, f"reshape {before} -> {after} moves the batch or channel dimension")
    if after[: dim + 1] == before[: dim + 1]:
        return labels
    tail = len(before) - dim
    if len(after) - tail >= 1 and after[len(after) - tail :] == before[dim:]:
        ctx.dims[node] = len(after) - tail
        return labels
    if dim < len(after) and after[:dim] == before[:dim]:
        for end in range(dim + 2, len(before) + 1):
            repeat = math.prod(before[dim + 1 : end])
            if after[dim] == before[dim] * repeat:
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
    dim = ctx.dims.get(node, ctx.dim(arg))
    if name in ("view", "reshape") and len(sizes) > dim and isinstance(sizes[dim], int) and sizes[dim] != -1:
        # a literal such as x.view(-1, 256 * 4 * 4) bakes in the channel count: never shrink it
        ctx.graph.block(labels, f"{_describe(node)} has the channel count written in the code")
    return out


def flatten_like(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    arg, labels = _first(node, ctx)
    return _reshape_labels(node, ctx, arg, labels)


def _dims_arg(node: torch.fx.Node, position: int, key: str = "dim") -> Any:
    return node.args[position] if len(node.args) > position else node.kwargs.get(key)


def reduce_spatial(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """mean/sum/amax over spatial dims only (global pooling); reducing N is refused. Reducing C (a dot product of
    embedding rows ``(u * v).sum(-1)``, an L2 norm over a descriptor's channels) mixes them: like softmax over C,
    they are kept whole, and the output's channels are new ones, never pruned."""
    arg, labels = _first(node, ctx)
    dims, ndim, dim = _dims_arg(node, 1), len(_shape(arg)), ctx.dim(arg)
    dims = [dims] if isinstance(dims, int) else dims
    over = {_norm_dim(d, ndim) for d in dims or ()}
    if dims and 0 not in over and dim in over:
        ctx.graph.block(labels, f"{_describe(node)} reduces over them")
        return None
    if not dims or 0 in over or dim in over:
        raise _fail(node, f"it reduces over dims {dims}, which include the batch or channel dimension")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if not keepdim:
        ctx.dims[node] = dim - sum(_norm_dim(d, ndim) < dim for d in dims)
    if _shape(node)[ctx.dims.get(node, dim)] != len(labels):
        raise _fail(node, f"expected it to keep the {len(labels)} channels, output shape is {_shape(node)}")
    return labels


def softmax_like(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    arg, labels = _first(node, ctx)
    dim = _dims_arg(node, 1)
    if dim is None:
        raise _fail(node, "softmax without an explicit dim")
    if _norm_dim(dim, len(_shape(arg))) == ctx.dim(arg):
        ctx.graph.block(labels, f"{_describe(node)} mixes them")  # fine only if they are never pruned
    return same_channels(node, ctx)


def reorder_dims(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """permute/transpose: the batch dim stays first; the channel dim moves (e.g. to channels-last)."""
    arg, labels = _first(node, ctx)
    ndim, dim = len(_shape(arg)), ctx.dim(arg)
    dims = [d for d in node.args[1:] if isinstance(d, int)]
    if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)):
        dims = list(node.args[1])
    dims = [_norm_dim(d, ndim) if isinstance(d, int) else d for d in dims]
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name == "permute" and sorted(dims) == list(range(ndim)) and dims[0] == 0:
        ctx.dims[node] = dims.index(dim)
    elif name != "permute" and len(dims) == 2 and 0 not in dims:
        ctx.dims[node] = {dims[0]: dims[1], dims[1]: dims[0]}.get(dim, dim)
    else:
        raise _fail(node, f"it moves the batch dimension (dims {dims})")
    if _shape(node)[ctx.dims[node]] != len(labels):
        raise _fail(node, f"internal channel bookkeeping mismatch after moving dims {dims}")
    return labels


def index_spatial(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """``x[:, :, 2:]``, ``x[:, 0]`` on tokens: full slices up to the channel dim, ints drop dims before it."""
    arg, labels = _first(node, ctx)
    index, dim = node.args[1], ctx.dim(arg)
    items = index if isinstance(index, tuple) else (index,)
    full = slice(None, None, None)
    new_dim, position = dim, 0
    for item in items:
        if position > dim:
            break
        if item is None:
            new_dim += 1
            continue
        if position == dim and isinstance(item, slice) and item != full and ctx.graph.is_blocked(labels):
            labels = labels[item]  # channels kept anyway (e.g. a split's gates): the slice keeps its ids
        elif position == 0 or position == dim:
            if item != full:
                raise _fail(node, f"indexing {index!r} selects along the batch or channel dimension")
        elif isinstance(item, int):
            new_dim -= 1
        elif not isinstance(item, slice):
            raise _fail(node, f"indexing {index!r} is not plain slices and integers")
        position += 1
    ctx.dims[node] = new_dim
    return labels


def _norm_owner(node: torch.fx.Node) -> str:
    """The module a functional norm's weight comes from (``stage.0.norm``), or the node itself."""
    weight = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")
    if isinstance(weight, torch.fx.Node) and weight.op == "get_attr":
        return repr(str(weight.target).rpartition(".")[0])
    return _describe(node)


def layer_norm_function(
    node: torch.fx.Node, ctx: RuleContext, *, normalized: tuple[int, ...] | None = None, owner: str = ""
) -> Labels:
    """LayerNorm / RMSNorm: channels it normalises over are kept whole; other dims pass through.

    Removing a channel would change the mean and variance every other channel is normalised with,
    so the pruned model would not equal the masked one: those channels are blocked, and the
    group's reason names the norm.
    """
    arg, labels = _first(node, ctx)
    if normalized is None:
        normalized = node.args[1] if len(node.args) > 1 else node.kwargs["normalized_shape"]
        normalized = (normalized,) if isinstance(normalized, int) else tuple(normalized)
    if ctx.dim(arg) >= len(_shape(arg)) - len(normalized):
        who = f"{repr(owner)}" if owner else _norm_owner(node)
        ctx.graph.block(
            labels, f"norm {who} normalises over these channels (pruning would change its statistics)"
        )
    return same_channels(node, ctx)


def group_norm_function(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """Functional group_norm (e.g. inside a GroupNorm subclass with its own forward): the group count is
    a constant of the traced code, so its channels are kept whole."""
    arg, _ = _first(node, ctx)
    labels = ctx.labels_on(arg, node, 1)
    ctx.dims[node] = 1
    ctx.graph.block(
        labels, f"group_norm of {_norm_owner(node)} is called as a function (group count fixed in code)"
    )
    return same_channels(node, ctx)


def metadata(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    if _shape(node) is not None:
        raise _fail(node, "it returns a tensor derived from a channel tensor")
    return None


# ---------------------------------------------------------------- layers
# fmt: off
_SAME = (
    "relu", "relu_", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh",
    "hardswish", "hardsigmoid", "hardtanh", "softplus", "softsign", "logsigmoid", "dropout", "alpha_dropout",
    "feature_alpha_dropout", "abs", "neg", "pos", "exp", "log", "log1p", "log2", "log10", "sqrt", "rsqrt", "square", "sin", "cos", "sign", "reciprocal", "erf", "floor",
    "ceil", "round", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "contiguous", "clone", "detach",
    "float", "double", "half", "to", "type_as",
)
_SPATIAL = (
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "lp_pool1d",
    "lp_pool2d", "interpolate", "upsample", "pad", "dropout1d", "dropout2d", "dropout3d",
)
_BINARY = (
    "add", "sub", "mul", "div", "truediv", "true_divide", "floordiv", "iadd", "isub", "imul", "itruediv",
    "add_", "sub_", "mul_", "div_", "pow", "maximum", "minimum", "rsub", "where", "eq", "ne", "lt", "le", "gt", "ge",
)
# fmt: on

# shared by call_function (by __name__) and call_method (by method name)
NAMED_RULES: dict[str, Callable[[torch.fx.Node, RuleContext], Labels]] = {
    **dict.fromkeys(_SAME, same_channels),
    **dict.fromkeys(("zeros_like", "ones_like"), same_channels),  # DIA-ResNet's first LSTM state: zeros of the pooled features' channels
    **dict.fromkeys(_SPATIAL, spatial_channels),
    **dict.fromkeys(_BINARY, broadcast_binary),
    **dict.fromkeys(("cat", "concat", "concatenate"), concatenate),
    **dict.fromkeys(("view", "reshape"), reshape),
    **dict.fromkeys(("flatten", "squeeze", "unsqueeze"), flatten_like),
    **dict.fromkeys(("mean", "sum", "amax", "amin", "std", "var", "logsumexp", "argmax", "argmin"), reduce_spatial),
    **dict.fromkeys(("softmax", "log_softmax", "softmin"), softmax_like),
    **dict.fromkeys(("transpose", "permute", "swapaxes"), reorder_dims),
    **dict.fromkeys(("layer_norm", "rms_norm"), layer_norm_function),
    "group_norm": group_norm_function,
    "getitem": index_spatial,
    **dict.fromkeys(("size", "dim", "ndimension", "numel", "nelement", "getattr", "type", "is_contiguous"), metadata),
}
