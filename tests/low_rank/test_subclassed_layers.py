"""Layers of a user's own subclasses of nn.Conv2d (as efficientnet-pytorch's Conv2dStaticSamePadding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc


class PaddedConv(nn.Conv2d):
    """Pads in forward (TF 'same'), like efficientnet-pytorch: a plain Conv2d would give another output."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__(cin, cout, k)
        self.pad = nn.ZeroPad2d((k - 1) // 2)

    def forward(self, x):
        return F.conv2d(self.pad(x), self.weight, self.bias)


class NamedConv(nn.Conv2d):
    """Another constructor, nn.Conv2d's forward: factorised as plain torch layers."""

    def __init__(self, channels: tuple[int, int], *, k: int = 3) -> None:
        super().__init__(channels[0], channels[1], k, padding=1)


def test_a_subclass_with_its_own_forward_is_skipped_and_one_with_torchs_forward_is_factorised():
    torch.manual_seed(0)
    model = nn.Sequential(PaddedConv(16, 32, 3), nn.ReLU(), NamedConv((32, 32)), nn.ReLU()).eval()
    x = torch.randn(2, 16, 8, 8)
    # before: constructing type(conv) with nn.Conv2d's arguments raised a bare AssertionError/TypeError
    small, summary = nc.factorize(model, rank=4)
    assert [s["name"] for s in summary["skipped"]] == ["0"]
    assert summary["skipped"][0]["reason"] == (
        "PaddedConv overrides Conv2d.forward; plain layers would change its output"
    )
    assert [layer["name"] for layer in summary["layers"]] == ["2"]
    assert type(small[0]) is PaddedConv
    assert [type(m) for m in small[2].modules()][1:] == [nn.Conv2d, nn.Conv2d]
    assert torch.equal(small[0](x), model[0](x))  # the skipped layer is the very same computation
    assert small(x).shape == model(x).shape == (2, 32, 8, 8)
