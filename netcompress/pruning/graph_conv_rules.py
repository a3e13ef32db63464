"""Channel rules of the convolutions: Conv1d/2d/3d, ConvTranspose1d/2d/3d and ``F.conv*d`` traced inside a
Conv subclass's own forward (the rules behind :func:`netcompress.pruning.graph_tracing.build_channel_graph`).

A transposed convolution couples its channels as a convolution does (``groups`` split inputs and outputs
alike; a depthwise one maps input channel ``i`` to outputs ``i * per_out ...``); only its weight is laid out
``(in, out / groups, *kernel)``, which its surgery and importance read by the layer kind ``conv_transpose``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx
from torch import nn

from netcompress.pruning.graph import LayerChannels
from netcompress.pruning.graph_tensor_rules import Labels, RuleContext, _describe, _fail, _first, _shape

CONV_TRANSPOSE_TYPES: tuple[type[nn.Module], ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _existing(ctx: RuleContext, name: str) -> LayerChannels | None:
    return ctx.graph.layers.get(name)


def conv_rule(node: torch.fx.Node, module: nn.Module, ctx: RuleContext, name: str | None = None) -> Labels:
    """Conv or ConvTranspose: fresh output ids, coupled to the inputs as ``groups`` say."""
    arg, x = _first(node, ctx)
    if len(_shape(arg)) != len(module.kernel_size) + 2:
        raise _fail(node, f"{type(module).__name__} called on an unbatched input of shape {_shape(arg)}")
    x = ctx.labels_on(arg, node, 1)
    ctx.dims[node] = 1  # a conv's output channels are dim 1, wherever its input's came from (an unsqueeze)
    name, graph = name or str(node.target), ctx.graph
    if (layer := _existing(ctx, name)) is not None:  # shared weights: both calls shrink together
        graph.unite(layer.in_labels, x, where=_describe(node))
        return layer.out_labels
    groups, c_out = module.groups, module.out_channels
    per_in, per_out = module.in_channels // groups, c_out // groups
    if groups == 1:
        out = graph.uf.new(c_out)
    elif per_in == 1:  # depthwise: output channel o is computed from input channel o // per_out only
        out = list(x) if per_out == 1 else graph.uf.new(c_out)
        for o in range(c_out if per_out > 1 else 0):
            graph.uf.union(out[o], x[o // per_out])
    else:  # grouped: position j is removed in every group so the groups stay equal in size
        for j in range(per_in):
            for k in range(1, groups):
                graph.uf.union(x[j], x[k * per_in + j])
        out = graph.uf.new(c_out)
        for j in range(per_out):
            for k in range(1, groups):
                graph.uf.union(out[j], out[k * per_out + j])
    kind = "conv_transpose" if isinstance(module, CONV_TRANSPOSE_TYPES) else "conv"
    graph.layers[name] = LayerChannels(name, kind, type(module).__name__, list(x), out)
    return out


def _own_parameter(ctx: RuleContext, value: object, attr: str) -> str | None:
    """The module owning ``value`` when it is that module's parameter ``attr`` read as it is (get_attr)."""
    if not (isinstance(value, torch.fx.Node) and value.op == "get_attr"):
        return None
    owner, _, leaf = str(value.target).rpartition(".")
    return owner if leaf == attr and owner in ctx.modules else None


def functional_conv_rule(node: torch.fx.Node, ctx: RuleContext) -> Labels:
    """``F.conv1d/2d/3d`` traced inside a Conv subclass's own forward (TF "same" padding, as in
    efficientnet-pytorch): that Conv layer, provided the call uses the module's own ``weight`` and
    ``bias`` unchanged and its ``groups``. A weight transformed in ``forward`` (weight standardisation
    couples every input channel of a filter) is refused, naming the layer."""
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    owner = _own_parameter(ctx, weight, "weight")
    module = ctx.modules.get(owner) if owner is not None else None
    if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise _fail(
            node,
            "its weight is not a Conv layer's own weight parameter used as it is (a weight computed in "
            "forward, e.g. standardised, ties all input channels of a filter together)",
        )
    if (bias is not None and _own_parameter(ctx, bias, "bias") != owner) or groups != module.groups:
        raise _fail(node, f"it does not use the bias/groups of its layer {owner!r}")
    return conv_rule(node, module, ctx, name=owner)


FUNCTION_LAYER_RULES: dict[str, Callable[[torch.fx.Node, RuleContext], Labels]] = {
    "conv1d": functional_conv_rule,
    "conv2d": functional_conv_rule,
    "conv3d": functional_conv_rule,
}

__all__ = ["CONV_TRANSPOSE_TYPES", "FUNCTION_LAYER_RULES", "conv_rule", "functional_conv_rule"]
