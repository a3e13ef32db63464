"""Small models for the embedded digits data and quick tests: MLP, LeNet and the demo digits CNN."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.models.catalog import check_int, check_width, register_model, scaled


class MLP(nn.Module):
    """``flatten`` then ``layers`` (Linear, ReLU, ..., Linear): takes (N, in_features) or any (N, ...) of that size."""

    def __init__(self, *, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten(1)
        layers: list[nn.Module] = []
        previous = in_features
        for size in hidden:
            layers += [nn.Linear(previous, size), nn.ReLU()]
            previous = size
        layers.append(nn.Linear(previous, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(self.flatten(x))


@register_model("mlp", input_shape=lambda kw: (kw["in_features"],))
def mlp(*, in_features: int = 64, hidden: Sequence[int] = (128, 64), num_classes: int = 10) -> MLP:
    """Multi-layer perceptron; flattens its input, so 1x8x8 digits work directly: 17,226 params at the defaults.

    Example:
        >>> mlp(in_features=64)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    check_int("in_features", in_features)
    check_int("num_classes", num_classes)
    for i, size in enumerate(hidden):
        check_int(f"hidden[{i}]", size)
    return MLP(in_features=in_features, hidden=list(hidden), num_classes=num_classes)


class LeNet(nn.Module):
    """LeNet-5 with ReLU and max-pool: ``features`` (conv, relu, pool, conv, relu, pool), ``classifier`` (3 Linear)."""

    def __init__(self, *, in_channels: int, num_classes: int, input_size: int) -> None:
        super().__init__()
        # 5x5 kernels for MNIST-sized inputs; 3x3 for 8x8 digits, where a 5x5 kernel would see most of the image
        kernel = 5 if input_size >= 20 else 3
        second_pad = 0 if kernel == 5 else 1
        spatial = ((input_size // 2) + 2 * second_pad - kernel + 1) // 2
        if spatial < 1:
            raise ConfigError(f"input_size={input_size} is too small for LeNet (need at least 8)")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel, padding=kernel // 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel, padding=second_pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            nn.Linear(16 * spatial * spatial, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


@register_model("lenet", input_shape=lambda kw: (kw["in_channels"], kw["input_size"], kw["input_size"]))
def lenet(*, in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> LeNet:
    """LeNet-5 for square inputs: 61,706 params at 28x28 (MNIST layout), 19,754 at 8x8 (digits).

    Example:
        >>> lenet(input_size=8)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    check_int("in_channels", in_channels)
    check_int("num_classes", num_classes)
    check_int("input_size", input_size, lo=8)
    return LeNet(in_channels=in_channels, num_classes=num_classes, input_size=input_size)


class DigitsCNN(nn.Module):
    """``features`` (conv-BN-ReLU x2, max-pool, conv-BN-ReLU), global average pool, ``fc``."""

    def __init__(self, *, in_channels: int, num_classes: int, channels: Sequence[int]) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1, bias=False),
            nn.BatchNorm2d(c3),
            nn.ReLU(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.avgpool(self.features(x))))


@register_model("digits_cnn", input_shape=lambda kw: (kw["in_channels"], 8, 8))
def digits_cnn(*, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> DigitsCNN:
    """The demo model: a small CNN for 1x8x8 sklearn digits, 16-32-64 channels, 24,058 params at width 1.

    Example:
        >>> digits_cnn()(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    check_int("num_classes", num_classes)
    check_int("in_channels", in_channels)
    width = check_width(width)
    return DigitsCNN(
        in_channels=in_channels, num_classes=num_classes, channels=[scaled(c, width) for c in (16, 32, 64)]
    )
