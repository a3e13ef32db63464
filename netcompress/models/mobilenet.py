"""A compact MobileNet-style student for 32x32 images: conv stem, depthwise-separable blocks, pool, fc.

Used as the small model in distillation and architecture-design experiments: about 20x fewer
parameters than CIFAR ResNet-18 at width 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from netcompress.core.config import check_choice
from netcompress.core.errors import ConfigError
from netcompress.models.blocks import ACTIVATIONS, ConvBNAct, DepthwiseSeparable2d
from netcompress.models.catalog import check_int, check_width, register_model, scaled

# (out_channels, stride) per depthwise-separable block; three stride-2 blocks take 32x32 to 4x4
DEFAULT_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
)


class MobileNetStudent(nn.Module):
    """``stem`` (ConvBNAct 3x3), ``blocks`` (DepthwiseSeparable2d...), global average pool, ``fc``."""

    def __init__(
        self,
        *,
        stem_channels: int,
        blocks: Sequence[tuple[int, int]],
        num_classes: int,
        in_channels: int,
        act: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self.stem = ConvBNAct(in_channels, stem_channels, act=act)
        layers = []
        channels = stem_channels
        for out_channels, stride in blocks:
            layers.append(DepthwiseSeparable2d(channels, out_channels, stride=stride, act=act))
            channels = out_channels
        self.blocks = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(self.dropout(self.flatten(self.avgpool(x))))


def _check_blocks(blocks: Sequence) -> list[tuple[int, int]]:
    out = []
    for i, block in enumerate(blocks):
        if not isinstance(block, list | tuple) or len(block) != 2:
            raise ConfigError(f"blocks[{i}]={block!r} must be a pair [out_channels, stride]")
        check_int(f"blocks[{i}] out_channels", block[0])
        check_choice(f"blocks[{i}] stride", block[1], (1, 2))
        out.append((block[0], block[1]))
    if not out:
        raise ConfigError("blocks must hold at least one [out_channels, stride] pair")
    return out


def _shape(kw: dict) -> tuple[int, ...]:
    return (kw["in_channels"], 32, 32)


@register_model("mobilenet_student", input_shape=_shape)
def mobilenet_student(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    stem_channels: int = 32,
    blocks: Sequence[Sequence[int]] = DEFAULT_BLOCKS,
    act: str = "relu",
    dropout: float = 0.0,
) -> MobileNetStudent:
    """MobileNet-style depthwise-separable CNN for 32x32 inputs: 543,050 params at width 1.0, 10 classes.

    ``blocks`` lists ``(out_channels, stride)`` per depthwise-separable block; ``width`` scales every
    channel count (width=0.5: 141,994 params). ``act`` is "relu" (absorbed into int8 convs) or "relu6".

    Example:
        >>> mobilenet_student(num_classes=10, width=0.5)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    check_int("num_classes", num_classes)
    check_int("in_channels", in_channels)
    check_int("stem_channels", stem_channels)
    check_choice("act", act, ACTIVATIONS)
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout={dropout!r} must be within [0, 1)")
    width = check_width(width)
    return MobileNetStudent(
        stem_channels=scaled(stem_channels, width),
        blocks=[(scaled(c, width), s) for c, s in _check_blocks(blocks)],
        num_classes=num_classes,
        in_channels=in_channels,
        act=act,
        dropout=dropout,
    )
