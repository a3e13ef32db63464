"""Dynamic (slimmable) width: one set of weights that runs at several widths.

:func:`make_slimmable` copies a conv/BN/Linear chain and swaps its layers for slimmable ones:
at width ``w`` a layer uses its first ``ceil(w * C)`` output channels (and as many input
channels as arrive), and every BatchNorm keeps private statistics and affine parameters per
width ("switchable BN", Yu et al., *Slimmable Neural Networks*, 2019), because the mean and
variance of a layer change with the number of channels feeding it. The last layer keeps all
its outputs (the classes). :func:`extract_width` cuts out a plain, physically smaller model
for one width, with the same outputs.

Because the active channels are always a prefix, a ``flatten`` between a conv and a Linear
needs nothing special: the first ``c`` channels are the first ``c * H * W`` features.

Example::

    slim = make_slimmable(model, widths=(0.25, 0.5, 1.0), example_inputs=torch.randn(1, 1, 8, 8))
    set_width(slim, 0.5)
    small = extract_width(slim, 0.5)      # plain nn.Conv2d/BatchNorm2d/Linear, half the channels
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.selection import set_submodule
from netcompress.dynamic.slim_layers import (
    BATCH_NORMS,
    DEPTHWISE_LAYERS,
    PASSTHROUGH,
    PASSTHROUGH_FUNCTIONS,
    PASSTHROUGH_METHODS,
    WEIGHT_LAYERS,
    SlimDepthwiseConv,
    SlimWeightLayer,
    SwitchableBatchNorm,
    is_depthwise,
    slim_weight_layer,
)
from netcompress.evaluation.harness import eval_mode


class SlimmableModel(nn.Module):
    """A model whose slimmable layers all follow one ``width`` (one of ``widths``).

    ``net`` is the copied model with its layers swapped; ``forward`` is ``net``'s own.
    ``input_shape`` (one sample) lets :func:`extract_width` size the extracted layers.
    """

    def __init__(self, net: nn.Module, *, widths: Sequence[float], input_shape: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.widths = tuple(sorted({float(w) for w in widths}))
        self.input_shape = tuple(int(s) for s in input_shape)
        self.width = max(self.widths)
        self.set_width(self.width)

    def slim_layers(self) -> dict[str, nn.Module]:
        return {
            n: m for n, m in self.net.named_modules() if isinstance(m, (SlimWeightLayer, SwitchableBatchNorm))
        }

    def set_width(self, width: float) -> SlimmableModel:
        """Run at ``width`` from now on; it must be one of ``widths`` (each has its own BN)."""
        width = float(width)
        match = [w for w in self.widths if abs(w - width) < 1e-9]
        if not match:
            raise ConfigError(f"width={width} is not one of the trained widths {list(self.widths)}")
        self.width = match[0]
        for layer in self.slim_layers().values():
            layer.width = self.width
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)


def set_width(model: SlimmableModel, width: float) -> SlimmableModel:
    """Switch a :class:`SlimmableModel` (in place) to ``width``; returns it.

    Example:
        >>> set_width(slim, 0.5)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    if not isinstance(model, SlimmableModel):
        raise UnsupportedModelError(
            f"set_width needs a SlimmableModel (make_slimmable), got {type(model).__name__}"
        )
    return model.set_width(width)


def _check_chain(gm: fx.GraphModule) -> list[str]:
    """Names of the Conv/Linear layers in call order; anything that is not a plain chain is refused."""
    modules = dict(gm.named_modules())
    weight_layers = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        tensor_inputs = [
            a for a in node.all_input_nodes if not (a.op == "call_method" and a.target == "size")
        ]
        if len(tensor_inputs) > 1:
            raise UnsupportedModelError(
                f"node {node.name!r} ({node.target}) joins {len(tensor_inputs)} branches "
                f"({', '.join(a.name for a in tensor_inputs)}); slimmable width supports plain chains only"
            )
        if node.op == "call_module":
            module = modules[node.target]
            if type(module) in WEIGHT_LAYERS:
                if getattr(module, "groups", 1) != 1 and not is_depthwise(module):
                    raise UnsupportedModelError(
                        f"layer {node.target!r} is a grouped convolution (groups={module.groups}); "
                        "slimmable width supports groups=1 and depthwise convolutions"
                    )
                if is_depthwise(module) and module.padding_mode != "zeros":
                    raise UnsupportedModelError(
                        f"layer {node.target!r}: depthwise conv with padding_mode={module.padding_mode!r}"
                    )
                weight_layers.append(str(node.target))
            elif not isinstance(module, (*BATCH_NORMS, *PASSTHROUGH)):
                raise UnsupportedModelError(
                    f"layer {node.target!r} ({type(module).__name__}) is not supported by slimmable width; "
                    f"supported: Conv1d/Conv2d/Linear, BatchNorm, and {', '.join(t.__name__ for t in PASSTHROUGH)}"
                )
        elif node.op == "call_function" and node.target not in PASSTHROUGH_FUNCTIONS:
            raise UnsupportedModelError(
                f"op {getattr(node.target, '__name__', node.target)!r} at node {node.name!r} is not supported by slimmable width"
            )
        elif node.op == "call_method":
            if node.target not in PASSTHROUGH_METHODS:
                raise UnsupportedModelError(
                    f"method .{node.target}() at node {node.name!r} is not supported by slimmable width"
                )
            if node.target in ("view", "reshape") and any(
                isinstance(a, int) and a != -1 for a in node.args[2:]
            ):
                # a literal feature count would break at a smaller width
                raise UnsupportedModelError(
                    f"node {node.name!r} reshapes to fixed sizes {node.args[1:]}; use flatten or view(n, -1)"
                )
    if not weight_layers:
        raise UnsupportedModelError("the model has no Conv1d/Conv2d/Linear layer to slim")
    return weight_layers


def make_slimmable(
    model: nn.Module, *, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0), example_inputs: torch.Tensor
) -> SlimmableModel:
    """A new :class:`SlimmableModel` from a conv/BN/Linear chain (the input model is untouched).

    At width 1.0 it computes exactly what ``model`` computes. Residual adds, concatenations,
    grouped convolutions and unknown layers raise :class:`UnsupportedModelError` naming the node.

    Example:
        >>> slim = make_slimmable(digits_cnn(), widths=(0.5, 1.0), example_inputs=torch.randn(1, 1, 8, 8))
        >>> slim.widths
        (0.5, 1.0)
    """
    widths = [float(w) for w in widths]
    if not widths:
        raise ConfigError("widths is empty")
    for w in widths:
        if not 0.0 < w <= 1.0:
            raise ConfigError(f"width {w} must be in (0, 1]")
    if abs(max(widths) - 1.0) > 1e-9:
        raise ConfigError(f"widths {widths} must include 1.0 (the full model)")
    if not isinstance(example_inputs, torch.Tensor):
        raise ConfigError(f"example_inputs must be one tensor, got {type(example_inputs).__name__}")
    net = copy.deepcopy(model)
    try:
        gm = fx.symbolic_trace(net)
    except Exception as exc:  # fx raises several types for data-dependent code
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc})"
        ) from exc
    weight_layers = _check_chain(gm)
    for name, module in list(net.named_modules()):
        if name in weight_layers:
            table = DEPTHWISE_LAYERS if is_depthwise(module) else WEIGHT_LAYERS
            new = slim_weight_layer(module, table[type(module)])
            new.fixed_out = name == weight_layers[-1]
            set_submodule(net, name, new)
    _swap_batch_norms(gm, net, weight_layers[-1], widths)
    return SlimmableModel(net, widths=widths, input_shape=example_inputs.shape[1:])


def _swap_batch_norms(gm: fx.GraphModule, net: nn.Module, last_layer: str, widths: list[float]) -> None:
    """Switchable BN for every BatchNorm before the last layer (after it the width is full)."""
    modules = dict(gm.named_modules())
    after_last = False
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        if node.target == last_layer:
            after_last = True
        if isinstance(modules[node.target], BATCH_NORMS) and not after_last:
            set_submodule(net, str(node.target), SwitchableBatchNorm(modules[node.target], widths))


class _InputWidths:
    """Forward pre-hook recording how many input channels/features each layer receives."""

    def __init__(self) -> None:
        self.seen: dict[nn.Module, int] = {}

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.seen[module] = int(args[0].shape[1] if not isinstance(module, nn.Linear) else args[0].shape[-1])


def extract_width(model: SlimmableModel, width: float) -> nn.Module:
    """A plain standalone model at ``width``: physically smaller Conv/BN/Linear layers, same outputs.

    The slimmable model is left as it was (width included).

    Example:
        >>> small = extract_width(slim, 0.5)
        >>> (small(x) - set_width(slim, 0.5)(x)).abs().max() < 1e-5
        tensor(True)
    """
    if not isinstance(model, SlimmableModel):
        raise UnsupportedModelError(f"extract_width needs a SlimmableModel, got {type(model).__name__}")
    previous = model.width
    model.set_width(width)
    recorder = _InputWidths()
    handles = [
        m.register_forward_pre_hook(recorder) for m in model.net.modules() if isinstance(m, SlimWeightLayer)
    ]
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, *model.input_shape))
            net = copy.deepcopy(model.net)  # copied in eval mode
        originals = dict(model.net.named_modules())
        for name, layer in list(net.named_modules()):
            if isinstance(layer, SlimWeightLayer):
                set_submodule(net, name, _plain_weight_layer(layer, recorder.seen[originals[name]]))
            elif isinstance(layer, SwitchableBatchNorm):
                set_submodule(net, name, copy.deepcopy(layer.current()))
    finally:
        for handle in handles:
            handle.remove()
        model.set_width(previous)
    return net


def _plain_weight_layer(layer: nn.Module, in_size: int) -> nn.Module:
    full_out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    depthwise = isinstance(layer, SlimDepthwiseConv)
    out = in_size if depthwise else layer.active_out(full_out)
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        plain: nn.Module = nn.Linear(in_size, out, bias=has_bias)
    else:
        cls = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Conv1d
        plain = cls(in_size, out, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                    dilation=layer.dilation, bias=has_bias, padding_mode=layer.padding_mode,
                    groups=in_size if depthwise else 1)  # fmt: skip
    with torch.no_grad():
        plain.weight.copy_(layer.weight[:out] if depthwise else layer.weight[:out, :in_size])
        if has_bias:
            plain.bias.copy_(layer.bias[:out])
    return plain.to(layer.weight.device, layer.weight.dtype)
