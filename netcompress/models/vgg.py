"""CIFAR-style VGG built from a cfg list (the network-slimming VGG): conv3x3 + BN + ReLU, "M" = max-pool.

The cfg list is the whole architecture, so a channel-pruned VGG is just a shorter cfg; E1 prints
pruned models this way (``Conv2d(3, 51) ... Linear(53, 10)``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.models.catalog import check_int, check_width, register_model, scaled

CfgItem = int | str

# network-slimming (Liu et al. 2017) cifar variants: no final "M", global pooling before the classifier
# one architecture per line reads better than one number per line
# fmt: off
VGG_CFGS: dict[str, list[CfgItem]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
    # the CPU reference model of the benchmarks' CIFAR protocol: 585,450 parameters at 10 classes
    "narrow": [32, 32, "M", 64, 64, "M", 128, 128, "M", 256, "M"],
}
# fmt: on


class VGG(nn.Module):
    """``features`` (flat Sequential of Conv2d/BatchNorm2d/ReLU/MaxPool2d), global average pool, ``classifier``.

    Global average pooling equals flattening when the last feature map is 1x1, and keeps the
    model valid for any input size, without data-dependent control flow (fx-traceable).
    """

    def __init__(
        self, *, cfg: Sequence[CfgItem], num_classes: int, in_channels: int, batch_norm: bool
    ) -> None:
        super().__init__()
        self.cfg = list(cfg)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in self.cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            # the conv bias is redundant in front of BatchNorm (its shift absorbs it)
            layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU())
            channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def _resolve_cfg(cfg: str | Sequence[CfgItem], width: float) -> list[CfgItem]:
    if isinstance(cfg, str):
        if cfg not in VGG_CFGS:
            raise ConfigError(f"unknown VGG cfg name {cfg!r}; known: {', '.join(VGG_CFGS)} (or give a list)")
        cfg = VGG_CFGS[cfg]
    items = list(cfg)
    for i, item in enumerate(items):
        if item != "M" and (isinstance(item, bool) or not isinstance(item, int) or item < 1):
            raise ConfigError(f"cfg[{i}]={item!r}: each cfg entry must be a positive channel count or 'M'")
    if not any(item != "M" for item in items):
        raise ConfigError(f"cfg={items!r} has no conv layer")
    return [item if item == "M" else scaled(item, width) for item in items]


def _cifar_shape(kw: dict) -> tuple[int, ...]:
    return (kw["in_channels"], 32, 32)


@register_model("cifar_vgg", input_shape=_cifar_shape)
def cifar_vgg(
    *,
    cfg: str | Sequence[CfgItem] = "vgg16",
    num_classes: int = 10,
    in_channels: int = 3,
    batch_norm: bool = True,
    width: float = 1.0,
) -> VGG:
    """CIFAR VGG from a cfg list of channel counts and "M" (max-pool 2x2), or a cfg name.

    Names: vgg11, vgg13, vgg16 (default, 14,724,042 params at 10 classes), vgg19, narrow
    (32-32-M-64-64-M-128-128-M-256-M, 585,450 params). ``width`` scales every channel count.

    Example:
        >>> model = cifar_vgg(cfg=[64, 64, "M", 128, "M"], num_classes=10)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    check_int("num_classes", num_classes)
    check_int("in_channels", in_channels)
    if not isinstance(batch_norm, bool):
        raise ConfigError(f"batch_norm={batch_norm!r} must be true or false")
    resolved = _resolve_cfg(cfg, check_width(width))
    return VGG(cfg=resolved, num_classes=num_classes, in_channels=in_channels, batch_norm=batch_norm)
