"""A Conv2d subclass whose own forward takes two inputs and returns two (pytorchcv's OctConv:
``forward(hx, lx=None) -> (hy, ly)``, slices of one weight feeding four convolutions). It was wrapped like a plain
conv: int8 PTQ refused with a misleading "inputs do not fit the model" (``QuantLayer.forward() takes 2 positional
arguments but 3 were given``), 4-bit weights and the accuracy-aware search crashed on the traced ``None + None``
and Wanda crashed on its input rows. Such a layer is not a layer a quantizer wraps (the tracer follows its forward
and it stays float) and Wanda sets it aside with the reason."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc
from netcompress.quantization.modules import is_quantizable


class TwoWayConv(nn.Conv2d):
    """High and low frequency halves of one 3x3 conv, OctConv-style."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, padding=1)
        self.half = channels // 2

    def forward(self, hx, lx=None):
        h = self.half
        hy = F.conv2d(hx, self.weight[:h, :h], self.bias[:h], padding=1)
        if lx is None:
            return hy, F.conv2d(F.avg_pool2d(hx, 2), self.weight[h:, :h], self.bias[h:], padding=1)
        ly = F.conv2d(lx, self.weight[h:, h:], self.bias[h:], padding=1)
        return hy + F.interpolate(F.conv2d(lx, self.weight[:h, h:], None, padding=1), scale_factor=2), ly


class OctNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.first = TwoWayConv(16)
        self.second = TwoWayConv(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        hx, lx = self.first(torch.relu(self.stem(x)))
        hx, lx = self.second(torch.relu(hx), torch.relu(lx) if lx is not None else None)
        return self.head(torch.cat([hx.mean((2, 3)), lx.mean((2, 3))], 1))


def _batches(n=2):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 4, (4,), generator=gen)) for _ in range(n)]


def test_the_two_input_conv_stays_float_and_the_rest_quantizes():
    torch.manual_seed(0)
    model, x = OctNet().eval(), torch.randn(2, 3, 8, 8)
    assert not is_quantizable(model.first) and is_quantizable(model.stem)
    q = nc.quantize(model, _batches(), bits=8)
    with torch.no_grad():
        ref, out = model(x), q(x)
    sqnr = 10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean())
    assert sqnr > 25  # stem and head int8, the two-way convs float


def test_wanda_sets_the_two_input_conv_aside():
    torch.manual_seed(0)
    model = OctNet().eval()
    before = model.first.weight.detach().clone()
    nc.prune_wanda_(model, _batches(), amount=0.5, calib_batches=2)
    assert torch.equal(model.first.weight, before)  # not pruned
    assert float((model.head.weight == 0).float().mean()) == 0.5
