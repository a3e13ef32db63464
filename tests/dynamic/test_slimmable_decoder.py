"""Slimmable width through ConvTranspose1d/2d/3d (dense, grouped, depthwise) and InstanceNorm (affine or not), so
decoders and MONAI's U-Nets switch widths: width 1 equals the original, and a width extracted as a plain model
equals the slimmable one at that width, with the exact parameter count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.dynamic import extract_width, make_slimmable, set_width


class Decoder(nn.Module):
    def __init__(self, track: bool = False) -> None:
        super().__init__()
        self.stem, self.n0 = nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8)
        self.up1 = nn.ConvTranspose2d(8, 12, 2, stride=2)
        self.n1 = nn.InstanceNorm2d(12, affine=True, track_running_stats=track)
        self.up2 = nn.ConvTranspose2d(12, 8, 3, padding=1, groups=2)
        self.up3 = nn.ConvTranspose2d(8, 16, 3, padding=1, groups=8)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        x = F.relu(self.n0(self.stem(x)))
        y = F.relu(self.n1(self.up1(x)))
        return self.head(F.relu(self.up3(F.relu(self.up2(y)))))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_decoder_widths_equal_their_extracted_models() -> None:
    torch.manual_seed(0)
    model, x = Decoder().eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model.n1.weight.uniform_(0.5, 1.5), model.n1.bias.uniform_(-0.5, 0.5)
    slim = make_slimmable(model, widths=(0.5, 1.0), example_inputs=x[:1]).eval()
    assert (slim(x) - model(x)).abs().max().item() == 0.0
    small = extract_width(slim, 0.5).eval()
    with torch.no_grad():
        assert (small(x) - set_width(slim, 0.5)(x)).abs().max().item() < 1e-5
        assert (small(x) - model(x)).abs().max().item() > 1e-3
    assert (small.up1.out_channels, small.up2.groups, small.up3.groups, small.up3.out_channels) == (6, 2, 4, 8)
    # stem 3->4, up1 4->6 (k2), n1 6 affine, up2 6->4 in 2 groups (k3), up3 depthwise 4->8 (k3), head 8->2
    assert _params(small) == (3 * 4 * 9 + 4) + (4 * 6 * 4 + 6) + 12 + (6 * 2 * 9 + 4) + (4 * 2 * 9 + 8) + (8 * 2 + 2)


def test_instance_norm_with_running_statistics_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedModelError, match="'n1' \\(InstanceNorm2d\\) tracks running statistics"):
        make_slimmable(Decoder(track=True), widths=(0.5, 1.0), example_inputs=torch.randn(1, 3, 6, 6))


def test_monai_unet_switches_widths() -> None:
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = nets.UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2),
                      num_res_units=1).eval()  # fmt: skip
    x = torch.randn(2, 1, 16, 16)
    slim = make_slimmable(model, widths=(0.5, 1.0), example_inputs=x[:1]).eval()
    with torch.no_grad():
        assert (slim(x) - model(x)).abs().max().item() == 0.0
        small = extract_width(slim, 0.5).eval()
        assert (small(x) - set_width(slim, 0.5)(x)).abs().max().item() < 1e-5
    assert _params(small) < 0.5 * _params(model)
