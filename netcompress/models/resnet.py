"""ResNets with BasicBlocks: He et al.'s 3-stage CIFAR ResNet-20/56, CIFAR ResNet-18 and ImageNet ResNet-18.

Shortcuts that change shape are 1x1 conv + BN ("option B"), never zero-padding, so channel
pruning can shrink both sides of a residual add. Module names follow torchvision's ResNet
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``), so an ImageNet
state dict loads into :func:`resnet18` (``strict=False`` when the class count differs).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from netcompress.models.catalog import check_int, check_width, register_model, scaled


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    Each ReLU is its own module so quantizers and hooks can tell the two apart.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.downsample = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class ResNet(nn.Module):
    """Stem, stages of BasicBlocks (the first block of each stage after the first has stride 2), pool, fc.

    ``stem="cifar"``: conv3x3 stride 1, no max-pool (32x32 inputs). ``stem="imagenet"``: conv7x7 stride 2
    and max-pool 3x3 stride 2.
    """

    def __init__(
        self,
        *,
        stage_channels: Sequence[int],
        blocks_per_stage: Sequence[int],
        num_classes: int,
        in_channels: int,
        stem: str,
    ) -> None:
        super().__init__()
        stem_channels = stage_channels[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        channels = stem_channels
        for index, (out_channels, blocks) in enumerate(zip(stage_channels, blocks_per_stage), start=1):
            stride = 1 if index == 1 else 2
            stage = [BasicBlock(channels, out_channels, stride)]
            stage += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            channels = out_channels
        self.num_stages = len(stage_channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        # the stage count is fixed at construction, so this loop unrolls cleanly under torch.fx
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


def _cifar_shape(kw: dict) -> tuple[int, ...]:
    return (kw["in_channels"], 32, 32)


def _imagenet_shape(kw: dict) -> tuple[int, ...]:
    return (kw["in_channels"], 224, 224)


def _build(
    *, base: Sequence[int], blocks: Sequence[int], num_classes: int, in_channels: int, width: float, stem: str
) -> ResNet:
    check_int("num_classes", num_classes)
    check_int("in_channels", in_channels)
    width = check_width(width)
    return ResNet(
        stage_channels=[scaled(c, width) for c in base],
        blocks_per_stage=blocks,
        num_classes=num_classes,
        in_channels=in_channels,
        stem=stem,
    )


@register_model("cifar_resnet20", input_shape=_cifar_shape)
def cifar_resnet20(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    """CIFAR ResNet-20 (3 stages of 3 blocks, 16-32-64 channels, 1x1-conv shortcuts): 272,474 params at 10 classes.

    Example:
        >>> cifar_resnet20(num_classes=10)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    return _build(
        base=(16, 32, 64),
        blocks=(3, 3, 3),
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        stem="cifar",
    )


@register_model("cifar_resnet56", input_shape=_cifar_shape)
def cifar_resnet56(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    """CIFAR ResNet-56 (3 stages of 9 blocks, 16-32-64 channels, 1x1-conv shortcuts): 855,770 params at 10 classes.

    Example:
        >>> cifar_resnet56(width=0.5)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    return _build(
        base=(16, 32, 64),
        blocks=(9, 9, 9),
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        stem="cifar",
    )


@register_model("cifar_resnet18", input_shape=_cifar_shape)
def cifar_resnet18(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    """ResNet-18 for 32x32 inputs (64-128-256-512, 3x3 stem, no max-pool): 11,173,962 params at 10 classes.

    Example:
        >>> cifar_resnet18(num_classes=10)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    return _build(
        base=(64, 128, 256, 512),
        blocks=(2, 2, 2, 2),
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        stem="cifar",
    )


@register_model("resnet18", input_shape=_imagenet_shape)
def resnet18(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    """ImageNet ResNet-18 (7x7 stem + max-pool): 11,182,155 params at 11 classes, torchvision key names.

    Example:
        >>> resnet18(num_classes=11)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 11])
    """
    return _build(
        base=(64, 128, 256, 512),
        blocks=(2, 2, 2, 2),
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        stem="imagenet",
    )
