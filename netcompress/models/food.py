"""E3's 11-class food classifiers: the original 8-conv CNN and its depthwise-separable redesign.

Both layouts are pinned by the parameter counts the report states, which decide the bias and BN
placement (pooling holds no parameters; it follows the first four layers, taking 256x256 to 16x16):

* ``food_cnn``: 8 x (conv3x3 with bias -> BN -> ReLU), 16-32-64-128-256-256-256-256 channels:
  2,161,584 conv weights + 1,264 conv biases + 2,528 BN + 2,827 Linear = 2,168,203.
* ``food_cnn_dws``: conv3x3(3->16, bias) -> BN -> ReLU6, then per later layer depthwise 3x3 (bias)
  -> BN -> ReLU6 -> pointwise 1x1 (bias), the layout of the course's StudentNet: 256,779.
"""

from __future__ import annotations

from torch import nn

from netcompress.models.catalog import check_int, check_width, register_model, scaled

FOOD_CHANNELS = (16, 32, 64, 128, 256, 256, 256, 256)
# max-pool 2x2 after layers 0..3 (256 -> 16 pixels); the last four layers run at 16x16
POOLED_LAYERS = 4


class FoodCNN(nn.Module):
    """``features`` (flat Sequential), global average pool, ``fc``."""

    def __init__(self, features: nn.Sequential, out_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(out_channels, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.avgpool(self.features(x))))


def _shape(kw: dict) -> tuple[int, ...]:
    return (kw["in_channels"], 256, 256)


@register_model("food_cnn", input_shape=_shape)
def food_cnn(*, num_classes: int = 11, in_channels: int = 3, width: float = 1.0) -> FoodCNN:
    """E3's original 8-conv food classifier: exactly 2,168,203 params at 11 classes (256x256 inputs).

    Example:
        >>> food_cnn(num_classes=11)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 11])
    """
    check_int("num_classes", num_classes)
    check_int("in_channels", in_channels)
    channels = [scaled(c, check_width(width)) for c in FOOD_CHANNELS]
    layers: list[nn.Module] = []
    previous = in_channels
    for index, out in enumerate(channels):
        layers += [nn.Conv2d(previous, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        if index < POOLED_LAYERS:
            layers.append(nn.MaxPool2d(2))
        previous = out
    return FoodCNN(nn.Sequential(*layers), previous, num_classes)


@register_model("food_cnn_dws", input_shape=_shape)
def food_cnn_dws(*, num_classes: int = 11, in_channels: int = 3, width: float = 1.0) -> FoodCNN:
    """E3's depthwise-separable student: exactly 256,779 params at 11 classes (256x256 inputs).

    Every 3x3 conv after the first becomes depthwise 3x3 (bias) -> BN -> ReLU6 -> pointwise 1x1 (bias).

    Example:
        >>> food_cnn_dws(num_classes=11)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 11])
    """
    check_int("num_classes", num_classes)
    check_int("in_channels", in_channels)
    channels = [scaled(c, check_width(width)) for c in FOOD_CHANNELS]
    first = channels[0]
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, first, 3, padding=1),
        nn.BatchNorm2d(first),
        nn.ReLU6(),
        nn.MaxPool2d(2),
    ]
    previous = first
    for index, out in enumerate(channels[1:], start=1):
        layers += [
            nn.Conv2d(previous, previous, 3, padding=1, groups=previous),
            nn.BatchNorm2d(previous),
            nn.ReLU6(),
            nn.Conv2d(previous, out, 1),
        ]
        if index < POOLED_LAYERS:
            layers.append(nn.MaxPool2d(2))
        previous = out
    return FoodCNN(nn.Sequential(*layers), previous, num_classes)
