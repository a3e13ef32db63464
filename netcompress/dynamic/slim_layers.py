"""The layers of a slimmable model: Conv/Linear layers that run on a prefix of their channels,
switchable BatchNorm, and the tables of which layers are swapped or pass through unchanged.

At width ``w`` a layer uses its first ``ceil(w * C)`` output channels (and as many input
channels as arrive); every BatchNorm keeps private statistics and affine parameters per width
(Yu et al., *Slimmable Neural Networks*, 2019). :mod:`netcompress.dynamic.slimmable` builds
models from them.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def active_channels(full: int, width: float) -> int:
    """Channels used at ``width``: ``ceil(width * full)``, at least 1 (rounding noise ignored).

    Example:
        >>> active_channels(30, 0.1), active_channels(64, 0.25)
        (3, 16)
    """
    return max(1, math.ceil(width * full - 1e-6))


class SlimWeightLayer:
    """Shared state of slimmable Conv/Linear layers: the current width and whether outputs are fixed."""

    width: float = 1.0
    fixed_out: bool = False  # the model's last layer keeps every output (the classes)

    def active_out(self, full: int) -> int:
        return full if self.fixed_out else active_channels(full, self.width)


class SlimConv2d(SlimWeightLayer, nn.Conv2d):
    """Conv2d (groups=1) using its first ``ceil(width * out)`` filters on the channels it receives."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.active_out(self.out_channels)
        bias = None if self.bias is None else self.bias[:out]
        return self._conv_forward(x, self.weight[:out, : x.shape[1]], bias)


def is_depthwise(module: nn.Module) -> bool:
    """A convolution with one filter per channel (groups == in == out), whose width follows its input."""
    groups = getattr(module, "groups", 1)
    return groups > 1 and groups == module.in_channels == module.out_channels


class SlimDepthwiseConv(SlimWeightLayer, nn.Module):
    """Mixin body of slimmable depthwise convs: ``c`` channels in, ``c`` filters, ``groups=c``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        bias = None if self.bias is None else self.bias[:channels]
        conv = F.conv2d if isinstance(self, nn.Conv2d) else F.conv1d
        return conv(x, self.weight[:channels], bias, self.stride, self.padding, self.dilation, channels)


class SlimDepthwiseConv2d(SlimDepthwiseConv, nn.Conv2d):
    """Depthwise Conv2d running on however many (leading) channels arrive."""


class SlimDepthwiseConv1d(SlimDepthwiseConv, nn.Conv1d):
    """Depthwise Conv1d running on however many (leading) channels arrive."""


class SlimConv1d(SlimWeightLayer, nn.Conv1d):
    """Conv1d (groups=1) using its first ``ceil(width * out)`` filters on the channels it receives."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.active_out(self.out_channels)
        bias = None if self.bias is None else self.bias[:out]
        return self._conv_forward(x, self.weight[:out, : x.shape[1]], bias)


class SlimLinear(SlimWeightLayer, nn.Linear):
    """Linear using its first ``ceil(width * out)`` rows and the first columns it receives."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.active_out(self.out_features)
        bias = None if self.bias is None else self.bias[:out]
        return F.linear(x, self.weight[:out, : x.shape[-1]], bias)


class SwitchableBatchNorm(nn.Module):
    """One BatchNorm per width (private statistics and affine parameters); ``width`` picks it."""

    def __init__(self, source: nn.modules.batchnorm._BatchNorm, widths: Sequence[float]) -> None:
        super().__init__()
        self.widths = tuple(float(w) for w in widths)
        self.width = max(self.widths)
        self.num_features = source.num_features
        bns = []
        for w in self.widths:
            c = active_channels(source.num_features, w)
            bn = type(source)(c, eps=source.eps, momentum=source.momentum, affine=source.affine,
                              track_running_stats=source.track_running_stats)  # fmt: skip
            _copy_bn(source, bn, c)
            bns.append(bn)
        self.bns = nn.ModuleList(bns)

    def current(self) -> nn.Module:
        return self.bns[self.widths.index(self.width)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.current()(x)


def _copy_bn(source: nn.Module, target: nn.Module, channels: int) -> None:
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            src, dst = getattr(source, name, None), getattr(target, name, None)
            if src is not None and dst is not None:
                dst.copy_(src[:channels])
        if (
            getattr(source, "num_batches_tracked", None) is not None
            and target.num_batches_tracked is not None
        ):
            target.num_batches_tracked.copy_(source.num_batches_tracked)


def slim_weight_layer(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A slimmable copy of a Conv/Linear: same class hierarchy, same tensors."""
    new = copy.deepcopy(module)
    new.__class__ = cls  # the slim classes add no state of their own beyond two class defaults
    return new


# layer type -> slimmable class; the plain type is checked exactly, so subclasses are refused
WEIGHT_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: SlimConv2d,
    nn.Conv1d: SlimConv1d,
    nn.Linear: SlimLinear,
}
DEPTHWISE_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: SlimDepthwiseConv2d,
    nn.Conv1d: SlimDepthwiseConv1d,
}
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# layers that act per channel or per position and so work at any width unchanged
PASSTHROUGH = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.ELU,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Identity,
)  # fmt: skip
PASSTHROUGH_FUNCTIONS = {
    F.relu, F.relu6, torch.relu, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.max_pool2d, F.avg_pool2d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, F.max_pool1d, F.avg_pool1d, F.dropout, torch.flatten,
    operator.getitem,
}  # fmt: skip
PASSTHROUGH_METHODS = {"relu", "relu_", "sigmoid", "tanh", "flatten", "size", "view", "reshape"}
