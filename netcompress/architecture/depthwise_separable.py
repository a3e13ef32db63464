"""Depthwise-separable replacement of convolutions (MobileNet, Howard et al., 2017).

A ``k x k`` convolution from ``C_in`` to ``C_out`` channels costs ``C_in * C_out * k * k``
weights. Replacing it by a depthwise ``k x k`` convolution (one filter per input channel),
BatchNorm, an activation, and a pointwise ``1 x 1`` convolution costs
``C_in * k * k + 2 * C_in + C_in * C_out``: roughly ``1/C_out + 1/k^2`` of the original, with
the same output shape (stride, padding and dilation stay on the depthwise part).

:class:`DepthwiseSeparableConfig`, the method ``architecture/depthwise_separable`` and the
``to_depthwise_separable`` verb (a new model; the input is not modified) live here. In a recipe::

    - {op: architecture, method: depthwise_separable, activation: relu6, skip_first: true}
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from netcompress.architecture.layer_costs import add_layer_macs, param_count
from netcompress.core.config import Config, check_choice
from netcompress.core.methods import MethodData, Result, apply, register_method
from netcompress.core.registry import Registry
from netcompress.core.selection import select_modules, set_submodule

ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation")
ACTIVATIONS.register("relu6", nn.ReLU6)
ACTIVATIONS.register("relu", nn.ReLU)
ACTIVATIONS.register("hardswish", nn.Hardswish)

# conv type -> the BatchNorm that follows its depthwise part
_BATCH_NORMS: dict[type[nn.Module], type[nn.Module]] = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d}
INITS = ("default", "svd")


@dataclasses.dataclass
class DepthwiseSeparableConfig(Config):
    """Which convolutions become depthwise-separable, and what goes between the two parts.

    ``skip_first`` keeps the model's first convolution (the stem, which sees few channels and
    gains little). ``activation``: "relu6" (E3's choice), "relu", "hardswish" or None; ``bn``
    adds BatchNorm after the depthwise part. ``init="svd"`` starts from the per-channel rank-1
    approximation of the original weights instead of fresh random weights.

    Example:
        >>> DepthwiseSeparableConfig(activation="relu6", exclude=["features.0"])
    """

    include: list[str] | None = None
    exclude: list[str] = dataclasses.field(default_factory=list)
    skip_first: bool = True
    activation: str | None = "relu6"
    bn: bool = True
    init: str = "default"

    def __post_init__(self) -> None:
        check_choice("activation", self.activation, [*ACTIVATIONS.names(), None])
        check_choice("init", self.init, INITS)


class DepthwiseSeparable(nn.Sequential):
    """``depthwise -> [bn] -> [act] -> pointwise``; a named class so printed models say what it is."""


def _rank1_init(conv: nn.Module, depthwise: nn.Module, pointwise: nn.Module) -> None:
    """Best depthwise-separable approximation of ``conv``: per input channel ``c``, the
    (C_out, k*k) slice of its weight is replaced by its rank-1 SVD ``u s v^T`` -> the depthwise
    filter is ``sqrt(s) v`` and the pointwise column ``sqrt(s) u``. Exact (without BN and
    activation in between) when every slice has rank 1."""
    with torch.no_grad():
        w = conv.weight.detach().double()
        out_ch, in_ch = w.shape[:2]
        slices = w.transpose(0, 1).reshape(in_ch, out_ch, -1)  # (C_in, C_out, k*k)
        u, s, vh = torch.linalg.svd(slices, full_matrices=False)
        root = s[:, :1].sqrt()  # (C_in, 1)
        dw = (root * vh[:, 0, :]).reshape(depthwise.weight.shape)
        pw = (root * u[:, :, 0]).transpose(0, 1).reshape(pointwise.weight.shape)
        depthwise.weight.copy_(dw.to(depthwise.weight.dtype))
        pointwise.weight.copy_(pw.to(pointwise.weight.dtype))
        if depthwise.bias is not None:
            depthwise.bias.zero_()
        if conv.bias is not None:
            pointwise.bias.copy_(conv.bias)


def separable_from(
    conv: nn.Module, *, activation: str | None = "relu6", bn: bool = True, init: str = "default"
) -> DepthwiseSeparable:
    """The depthwise-separable block replacing one Conv1d/Conv2d (same output shape).

    Example:
        >>> block = separable_from(nn.Conv2d(16, 32, 3, padding=1))
        >>> sum(p.numel() for p in block.parameters())  # 16*9 + 2*16 + 16*32 + 32
        720
    """
    conv_type = type(conv)
    factory = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    in_ch, out_ch = conv.in_channels, conv.out_channels
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["depthwise"] = conv_type(
        in_ch,
        in_ch,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=in_ch,
        bias=not bn,  # BN's shift makes a depthwise bias redundant
        padding_mode=conv.padding_mode,
        **factory,
    )
    if bn:
        layers["bn"] = _BATCH_NORMS[conv_type](in_ch, **factory)
    if activation is not None:
        layers["act"] = ACTIVATIONS.get(activation)()
    layers["pointwise"] = conv_type(in_ch, out_ch, 1, bias=conv.bias is not None, **factory)
    block = DepthwiseSeparable(layers)
    if init == "svd":
        _rank1_init(conv, layers["depthwise"], layers["pointwise"])
    return block


def _skip_reason(conv: nn.Module) -> str | None:
    if conv.groups != 1:
        return f"grouped convolution (groups={conv.groups})"
    if conv.in_channels <= 1:
        return "single input channel: nothing to separate"
    if all(k == 1 for k in conv.kernel_size):
        return "1x1 kernel: already pointwise"
    return None


@register_method("architecture", "depthwise_separable", config=DepthwiseSeparableConfig)
def depthwise_separable(model: nn.Module, config: DepthwiseSeparableConfig, data: MethodData) -> Result:
    """Replace k x k convolutions by depthwise k x k + BN + activation + pointwise 1 x 1.

    Returns a new model; MACs are added to the summary when ``data.example_inputs`` is given.
    """
    include, exclude, skip_first = config.include, config.exclude, config.skip_first
    activation, bn, init = config.activation, config.bn, config.init
    conv_types = tuple(_BATCH_NORMS)
    new_model = copy.deepcopy(model)
    all_convs = [n for n, m in new_model.named_modules() if isinstance(m, conv_types)]
    chosen = select_modules(new_model, types=conv_types, include=include, exclude=exclude)
    converted, skipped = [], []
    for name, conv in chosen.items():
        reason = _skip_reason(conv)
        if reason is None and skip_first and all_convs and name == all_convs[0]:
            reason = "first convolution (skip_first=True)"
        if reason is not None:
            skipped.append({"name": name, "reason": reason})
            continue
        block = separable_from(conv, activation=activation, bn=bn, init=init)
        converted.append(
            {
                "name": name,
                "in_channels": conv.in_channels,
                "out_channels": conv.out_channels,
                "kernel_size": list(conv.kernel_size),
                "params_before": param_count(conv),
                "params_after": param_count(block),
            }
        )
        set_submodule(new_model, name, block)
    new_model.train(model.training)
    summary: dict[str, Any] = {
        "method": "depthwise_separable",
        "activation": activation,
        "bn": bn,
        "init": init,
        "converted": len(converted),
        "layers": converted,
        "skipped": skipped,
        "params_before": param_count(model),
        "params_after": param_count(new_model),
    }
    if data.example_inputs is not None:
        add_layer_macs(summary, converted, model, new_model, data.example_inputs)
    return Result(model=new_model, summary=summary)


def to_depthwise_separable(
    model: nn.Module,
    config: DepthwiseSeparableConfig | None = None,
    *,
    example_inputs: Any = None,
    **fields: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Return a copy of ``model`` whose ``k x k`` convolutions (groups=1, C_in > 1) are
    depthwise-separable blocks, and a summary. The input model is not modified.

    ``fields`` are :class:`DepthwiseSeparableConfig` fields (``include``, ``exclude``,
    ``skip_first``, ``activation``, ``bn``, ``init``); they override ``config``. With
    ``example_inputs`` the summary also holds MACs, per layer and in total.

    Example:
        >>> student, summary = nc.to_depthwise_separable(model, activation="relu6", example_inputs=x)
        >>> summary["params_before"], summary["params_after"]
    """
    base = config.to_dict() if config is not None else {}
    cfg = DepthwiseSeparableConfig.from_dict({**base, **fields}, where="to_depthwise_separable")
    result = apply(model, cfg, MethodData(example_inputs=example_inputs))
    return result.model, result.summary
