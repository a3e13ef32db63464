"""How each traced op moves channel ids: the rules behind :func:`netcompress.pruning.graph_tracing.build_channel_graph`.

Every rule receives an fx node whose inputs are already labelled and returns the channel ids of
its output (dim 1), or None for values that are not channel-carrying tensors (sizes, shapes).
Module rules live here, the convolutions' in :mod:`graph_conv_rules`; rules by function/method name in
:mod:`graph_tensor_rules`.
Rules are looked up in registries (module types, function names, method names); an op that is in
none of them and touches a labelled tensor raises UnsupportedModelError naming it.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable

import torch
import torch.fx
from torch import nn

import netcompress.pruning.graph_channel_pad  # noqa: F401  (registers the F.pad channel rule)
from netcompress.core.errors import UnsupportedModelError
from netcompress.pruning.graph import ChannelGraph, LayerChannels, is_prunable_custom
from netcompress.pruning.graph_conv_rules import (
    CONV_TRANSPOSE_TYPES,
    FUNCTION_LAYER_RULES,
    _existing,
    conv_rule,
)
from netcompress.pruning.graph_tensor_rules import (
    NAMED_RULES,
    Labels,
    RuleContext,
    _describe,
    _fail,
    _first,
    _flat_nodes,
    _fresh_blocked,
    _norm_dim,
    _shape,
    flatten_like,
    layer_norm_function,
    same_channels,
    spatial_channels,
)

SPLITS = ("split", "chunk", "tensor_split")


def _op_name(node: torch.fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def split_rule(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """``split`` / ``chunk`` / ``tensor_split`` (a tuple of pieces, read by ``getitem``). Along another dim every
    piece keeps the channels; along the channel dim the piece sizes are constants of the code (FocalNet splits
    a projection into query, context and gates), so those channels are kept, each piece its slice of them."""
    arg, labels = _first(node, ctx)
    metas = node.meta.get("tensor_meta")
    if not isinstance(metas, (tuple, list)) or not all(hasattr(m, "shape") for m in metas):
        raise _fail(node, "its output is not a tuple of tensors")
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    dim, channel = _norm_dim(dim, len(_shape(arg))), ctx.dim(arg)
    if dim != channel:
        pieces: list[Labels] = [list(labels) for _ in metas]
    else:
        ctx.graph.block(labels, f"{_describe(node)} splits them into pieces of sizes fixed in the code")
        ends = list(itertools.accumulate(m.shape[dim] for m in metas))
        pieces = [labels[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    if any(len(p) != m.shape[channel] for p, m in zip(pieces, metas, strict=True)):
        raise _fail(
            node, f"internal channel bookkeeping mismatch for pieces {[tuple(m.shape) for m in metas]}"
        )
    ctx.pieces[node] = pieces
    return None


def reduce_pair_rule(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """``std_mean`` / ``var_mean`` (a pair read by ``getitem``) over the channel dim (per-sample normalisation over
    (C, H, W): kornia's HardNet normalises its input so): it mixes them, so they are kept whole (as a sum over
    channels is); each result is a new tensor whose channels are never pruned."""
    arg, labels = _first(node, ctx)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    ndim = len(_shape(arg))
    over = {_norm_dim(d, ndim) for d in ([dims] if isinstance(dims, int) else dims or ())}
    if not (over and 0 not in over and ctx.dim(arg) in over):
        raise _fail(node, f"it reduces over dims {dims}; only a reduction over the channel dim (not the batch) is "
                    "followed")  # fmt: skip
    ctx.graph.block(labels, f"{_describe(node)} reduces over them")
    ctx.pieces[node] = [None, None]
    return None


def normalize_rule(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """``F.normalize(x, p, dim)``: over the channel dim it mixes them (kept whole, as softmax does)."""
    arg, labels = _first(node, ctx)
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 1)
    if _norm_dim(dim, len(_shape(arg))) == ctx.dim(arg):
        ctx.graph.block(labels, f"{_describe(node)} mixes them")
    return same_channels(node, ctx)


NAMED_RULES["normalize"] = normalize_rule


def _piece(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """``pieces[i]`` of a split: that piece's channel ids, on its input's channel dim."""
    source, index = node.args
    ctx.dims[node] = ctx.dim(source.args[0])
    return ctx.pieces[source][index]


def linear_rule(node: torch.fx.Node, module: nn.Module, ctx: RuleContext) -> Labels:
    """A Linear acts on the last dim: (N, features), tokens (N, L, C), channels-last (N, H, W, C)."""
    arg, _ = _first(node, ctx)
    if len(_shape(arg)) < 2:
        raise _fail(node, f"Linear on an unbatched input of shape {_shape(arg)}")
    x = ctx.labels_on(arg, node, -1)
    ctx.dims[node] = len(_shape(arg)) - 1
    name = str(node.target)
    if (layer := _existing(ctx, name)) is not None:
        ctx.graph.unite(layer.in_labels, x, where=_describe(node))
        return layer.out_labels
    out = ctx.graph.uf.new(module.out_features)
    ctx.graph.layers[name] = LayerChannels(name, "linear", type(module).__name__, list(x), out)
    return out


def embedding_rule(node: torch.fx.Node, module: nn.Module, ctx: RuleContext) -> Labels:
    """nn.Embedding / EmbeddingBag: a table lookup, its columns (the last dim) a source kept whole."""
    shape = _shape(node)
    if shape is None or len(shape) < 2:
        return None
    out = ctx.graph.uf.new(shape[-1])
    ctx.graph.block(out, f"{type(module).__name__} {str(node.target)!r}: a table's columns are kept whole")
    ctx.dims[node] = len(shape) - 1
    return out


def recurrent_rule(node: torch.fx.Node, module: nn.Module, ctx: RuleContext) -> Labels:
    """nn.LSTM / GRU / RNN: every step reads all input features (kept whole); its (output, state) tuple holds new
    features, kept whole too (the layer itself is not pruned; the layers around it are)."""
    arg, x = _first(node, ctx)
    shape, what = _shape(arg), f"{type(module).__name__} {str(node.target)!r}"
    metas = node.meta.get("tensor_meta")
    if len(shape) != 3 or ctx.dim(arg) != 2 or not isinstance(metas, (tuple, list)) or not hasattr(metas[0], "shape"):
        raise _fail(
            node, f"{str(node.target)!r} of type {type(module).__name__} is called on {tuple(shape)}, not on a "
            "batched sequence with its features last"
        )  # fmt: skip
    ctx.graph.block(x, f"{what} reads them all")
    out = ctx.graph.uf.new(metas[0].shape[-1])
    ctx.graph.block(out, f"{what}: its output features")
    ctx.pieces[node] = [out, None]  # output[0] keeps the input's feature dim (2); the state is new, kept whole
    return None


def per_channel_rule(kind: str) -> Callable[[torch.fx.Node, nn.Module, RuleContext], Labels]:
    """BatchNorm / InstanceNorm / PReLU: one vector (or none) over the channels, coupled to the input's ids."""

    def rule(node: torch.fx.Node, module: nn.Module, ctx: RuleContext) -> Labels:
        arg, _ = _first(node, ctx)
        if kind == "prelu" and module.num_parameters == 1:
            return same_channels(node, ctx)
        x = ctx.labels_on(arg, node, 1)
        ctx.dims[node] = 1
        name = str(node.target)
        if (layer := _existing(ctx, name)) is not None:
            ctx.graph.unite(layer.out_labels, x, where=_describe(node))
            return layer.out_labels
        ctx.graph.layers[name] = LayerChannels(name, kind, type(module).__name__, None, list(x))
        return same_channels(node, ctx)

    return rule


def custom_rule(node: torch.fx.Node, module: nn.Module, ctx: RuleContext) -> Labels:
    """A module with ``out_channels`` + ``prune_out_channels`` (e.g. a sinc filter bank) is a producer."""
    x = ctx.env.get(node.args[0]) if node.args and isinstance(node.args[0], torch.fx.Node) else None
    x = ctx.labels_on(node.args[0], node, 1) if x is not None else None
    name, out_shape = str(node.target), _shape(node)
    if out_shape is None or len(out_shape) < 2 or out_shape[1] != module.out_channels:
        raise _fail(
            node, f"output shape {out_shape} does not have out_channels={module.out_channels} at dim 1"
        )
    if (layer := _existing(ctx, name)) is not None:
        if layer.in_labels is not None and x is not None:
            ctx.graph.unite(layer.in_labels, x, where=_describe(node))
        else:
            ctx.graph.block(x)
        return layer.out_labels
    prunable_in = callable(getattr(module, "prune_in_channels", None)) and x is not None
    if not prunable_in:
        ctx.graph.block(x)
    out = ctx.graph.uf.new(module.out_channels)
    ctx.graph.layers[name] = LayerChannels(
        name, "custom", type(module).__name__, list(x) if prunable_in else None, out
    )
    return out


def groupnorm_rule(node: torch.fx.Node, module: nn.Module, ctx: RuleContext) -> Labels:
    """GroupNorm: each group's statistics stay exact only if the group is kept or removed whole."""
    arg, _ = _first(node, ctx)
    x, name = ctx.labels_on(arg, node, 1), str(node.target)
    ctx.dims[node] = 1
    per_group = module.num_channels // module.num_groups
    if module.num_groups == 1:
        ctx.graph.block(x, f"GroupNorm {name!r} has one group: it normalises all its channels together")
    for g in range(module.num_groups):
        for c in range(g * per_group + 1, (g + 1) * per_group):
            ctx.graph.uf.union(x[g * per_group], x[c])
    if (layer := _existing(ctx, name)) is not None:
        ctx.graph.unite(layer.out_labels, x, where=_describe(node))
        return layer.out_labels
    ctx.graph.layers[name] = LayerChannels(name, "groupnorm", type(module).__name__, None, list(x))
    return x


def layernorm_rule(node: torch.fx.Node, module: nn.Module, ctx: RuleContext) -> Labels:
    return layer_norm_function(node, ctx, normalized=tuple(module.normalized_shape), owner=str(node.target))


def _module_same(node: torch.fx.Node, module: nn.Module, ctx: RuleContext) -> Labels:
    return same_channels(node, ctx)


def _module_flatten(node: torch.fx.Node, module: nn.Module, ctx: RuleContext) -> Labels:
    return flatten_like(node, ctx)


def _module_spatial(node: torch.fx.Node, module: nn.Module, ctx: RuleContext) -> Labels:
    return spatial_channels(node, ctx)


def _module_lrn(node: torch.fx.Node, module: nn.Module, ctx: RuleContext) -> Labels:
    arg, labels = _first(node, ctx)  # LocalResponseNorm divides each channel by a window of its neighbours
    ctx.graph.block(labels, f"{_describe(node)} mixes neighbouring channels")
    return same_channels(node, ctx)


def _module_softmax(node: torch.fx.Node, module: nn.Module, ctx: RuleContext) -> Labels:
    arg, labels = _first(node, ctx)
    if module.dim is None or _norm_dim(module.dim, len(_shape(arg))) == ctx.dim(arg):
        ctx.graph.block(labels, f"{_describe(node)} mixes them")
    return same_channels(node, ctx)


_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    nn.Identity,
    nn.Dropout,
    nn.AlphaDropout,
)
_SPATIAL_MODULES: tuple[type[nn.Module], ...] = (
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d,
)  # fmt: skip

# ordered: the first matching type wins (protocol modules are checked before these)
MODULE_RULES: list[tuple[tuple[type[nn.Module], ...], Callable[..., Labels]]] = [
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d, *CONV_TRANSPOSE_TYPES), conv_rule),
    ((nn.Linear,), linear_rule),
    ((nn.Embedding, nn.EmbeddingBag), embedding_rule),
    ((nn.LSTM, nn.GRU, nn.RNN), recurrent_rule),
    ((nn.modules.batchnorm._BatchNorm,), per_channel_rule("batchnorm")),
    ((nn.modules.instancenorm._InstanceNorm,), per_channel_rule("instancenorm")),  # per channel and per sample
    ((nn.PReLU,), per_channel_rule("prelu")),
    ((nn.GroupNorm,), groupnorm_rule),
    ((nn.LayerNorm, nn.RMSNorm), layernorm_rule),
    (_ELEMENTWISE_MODULES, _module_same),
    (_SPATIAL_MODULES, _module_spatial),
    ((nn.Flatten,), _module_flatten),
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin), _module_softmax),
    ((nn.LocalResponseNorm, nn.CrossMapLRN2d), _module_lrn),
]
LEAF_TYPES: tuple[type[nn.Module], ...] = tuple(t for types, _ in MODULE_RULES for t in types)

_TRUSTED_MODULES = ("torch", "_operator", "operator", "builtins")


def label_node(
    node: torch.fx.Node,
    *,
    env: dict[torch.fx.Node, Labels],
    graph: ChannelGraph,
    modules: dict[str, nn.Module],
    dims: dict[torch.fx.Node, int] | None = None,
) -> Labels:
    """Channel ids of ``node``'s output, recording layers and couplings in ``graph`` on the way.

    ``dims`` (shared across calls) receives the channel dim of every labelled value that is not 1.
    """
    ctx = RuleContext(env, graph, modules, {} if dims is None else dims)
    shape = _shape(node)
    if node.op in ("placeholder", "get_attr"):
        return _fresh_blocked(graph, shape)
    if node.op == "output":
        for arg in _flat_nodes(node.args):
            graph.block(env.get(arg), "they are the model's output")
        return None
    if node.op == "call_module":
        module = modules[str(node.target)]
        rule = custom_rule if is_prunable_custom(module) else None
        rule = rule or next((r for types, r in MODULE_RULES if isinstance(module, types)), None)
        if rule is None:
            raise UnsupportedModelError(
                f"channel pruning cannot handle module {str(node.target)!r} of type {type(module).__name__} "
                f"(fx node {node.name!r}); supported layers: Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear, BatchNorm, "
                "InstanceNorm, GroupNorm, "
                "LayerNorm/RMSNorm, Embedding/EmbeddingBag, LSTM/GRU/RNN (channels kept whole), PReLU, "
                "activations, pooling, dropout, Flatten, or a module with out_channels + prune_out_channels()"
            )
        labels = rule(node, module, ctx)
    elif node.op == "call_function" and node.target is operator.getitem and node.args[0] in ctx.pieces:
        labels = _piece(node, ctx)
    elif (
        node.op in ("call_function", "call_method")
        and _op_name(node) in SPLITS
        and env.get(node.args[0]) is not None
    ):
        labels = split_rule(node, ctx)
    elif node.op in ("call_function", "call_method") and _op_name(node) in ("std_mean", "var_mean") and (
        env.get(node.args[0]) is not None
    ):
        labels = reduce_pair_rule(node, ctx)
    elif not any(env.get(a) is not None for a in _flat_nodes((node.args, node.kwargs))):
        return _fresh_blocked(graph, shape)  # built from sizes/constants only: nothing to prune
    else:
        if node.op == "call_method":
            name = str(node.target)
        else:
            name = getattr(node.target, "__name__", str(node.target))
            module_name = getattr(node.target, "__module__", None) or "torch"
            if not module_name.startswith(_TRUSTED_MODULES):
                name = f"{module_name}.{name}"  # a user function: never matched by name
        rule = NAMED_RULES.get(name) or (
            FUNCTION_LAYER_RULES.get(name) if node.op == "call_function" else None
        )
        if rule is None:
            if all(graph.is_blocked(env[a]) for a in _flat_nodes((node.args, node.kwargs)) if env.get(a) is not None):
                # every channel it reads is kept whole (HardNet8's PCA `mm` after an L2 norm over channels): its
                # inputs are those of the masked original, so is its output, a new tensor never pruned
                return _fresh_blocked(graph, shape)
            raise _fail(
                node, "this op is not known to keep or couple channels; rewrite it with supported ops"
            )
        labels = rule(node, ctx)
    if labels is not None and node not in ctx.dims:
        source = next((a for a in _flat_nodes((node.args, node.kwargs)) if env.get(a) is not None), None)
        if source is not None and shape is not None and ctx.dim(source) != 1:
            ctx.dims[node] = ctx.dim(source) + len(shape) - len(_shape(source))
    dim = ctx.dim(node)
    if labels is not None and (shape is None or len(shape) <= dim or shape[dim] != len(labels)):
        raise _fail(node, f"internal channel bookkeeping mismatch ({len(labels)} ids for shape {shape})")
    if labels is None and shape is not None and len(shape) >= 2:
        return _fresh_blocked(graph, shape)
    return labels


__all__ = ["LEAF_TYPES", "MODULE_RULES", "NAMED_RULES", "RuleContext", "label_node"]
