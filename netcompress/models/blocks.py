"""Layer blocks shared by several model families: conv+BN+activation and depthwise-separable convs."""

from __future__ import annotations

from torch import nn

# activations by recipe name; a registry-like table rather than an if/elif chain
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6}


class ConvBNAct(nn.Module):
    """``conv`` (k x k, "same" padding) -> ``bn`` -> ``act``; the conv has no bias because BN shifts."""

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 1, act: str = "relu"
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = ACTIVATIONS[act]()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparable2d(nn.Module):
    """MobileNet block: depthwise 3x3 -> BN -> act -> pointwise 1x1 -> BN -> act.

    Example:
        >>> DepthwiseSeparable2d(32, 64, stride=2)(torch.randn(1, 32, 16, 16)).shape
        torch.Size([1, 64, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, act: str = "relu") -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = ACTIVATIONS[act]()
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = ACTIVATIONS[act]()

    def forward(self, x):
        x = self.act1(self.bn1(self.depthwise(x)))
        return self.act2(self.bn2(self.pointwise(x)))
