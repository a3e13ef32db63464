"""Channel pruning through the ops of local-feature descriptors (kornia's HardNet, SOSNet): per-patch input
normalisation by ``torch.std_mean`` over (C, H, W), an L2 normalisation of the descriptor (``F.normalize`` guarded
by ``x.abs().amax(dim=1) == 0``), ``nn.LocalResponseNorm`` over channels. Each mixes the channels it reduces over,
so those are kept whole; the convolutions between them prune, and pruned == masked original.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError
from tests.channel_checks import pruned_equals_masked

X = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))


class Descriptor(nn.Module):
    """HardNet's shape in miniature: normalised input, conv stack, flattened and L2-normalised descriptor."""

    def __init__(self, lrn: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 8, 8),
        )  # fmt: skip
        self.norm = nn.LocalResponseNorm(8, alpha=8.0, beta=0.5, k=0.0) if lrn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sp, mp = torch.std_mean(x, dim=(-3, -2, -1), keepdim=True)
        x = (x - mp.detach()) / (sp.detach() + 1e-6)
        out = self.norm(self.features(x)).flatten(1)
        zero = out.abs().amax(dim=1, keepdim=True) == 0
        return torch.where(zero, torch.zeros_like(out), nn.functional.normalize(out, dim=1))


@pytest.mark.parametrize("lrn", [False, True])
def test_normalised_descriptor_prunes_its_inner_convolutions(lrn: bool) -> None:
    small = pruned_equals_masked(Descriptor(lrn), X, randomise_bn=True)
    assert small.features[0].out_channels < 16 and small.features[6].out_channels == 8  # the descriptor stays


class Inner(Descriptor):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features
        h = f[2](f[1](f[0](x)))
        sp, mp = torch.std_mean(h, dim=(1, 2, 3), keepdim=True)  # over the channels of the first conv
        return f[6](f[5](f[4](f[3]((h - mp) / (sp + 1e-6))))).flatten(1)


def test_std_mean_over_inner_channels_keeps_them_whole() -> None:
    small = pruned_equals_masked(Inner(), X, randomise_bn=True)
    assert small.features[0].out_channels == 16 and small.features[3].out_channels < 16


class PCADescriptor(Descriptor):
    """HardNet8's tail: the L2-normalised descriptor projected by a PCA matrix (a buffer) with ``torch.mm``, an op
    the channel rules do not know, reading only channels kept whole."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("components", torch.randn(8, 4, generator=torch.Generator().manual_seed(2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.normalize(self.features(x).flatten(1), dim=1)
        return nn.functional.normalize(torch.mm(out, self.components), dim=1)


def test_an_unknown_op_reading_only_whole_channels_is_followed() -> None:
    small = pruned_equals_masked(PCADescriptor(), X, randomise_bn=True)
    assert small.features[0].out_channels < 16 and small.features[6].out_channels == 8


def test_an_unknown_op_on_prunable_channels_is_refused() -> None:
    class Cumsum(Descriptor):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features
            h = torch.cumsum(f[2](f[1](f[0](x))), dim=1)  # mixes channels a later conv could prune
            return f[6](f[5](f[4](f[3](h)))).flatten(1)

    with pytest.raises(UnsupportedModelError, match="cumsum.*not known to keep or couple channels"):
        nc.prune_channels(Cumsum().eval(), X, ratio=0.3)


def test_std_mean_over_the_batch_is_refused() -> None:
    class OverBatch(Descriptor):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            sp, mp = torch.std_mean(self.features(x), dim=0, keepdim=True)
            return (mp / (sp + 1e-6)).flatten(1)

    with pytest.raises(UnsupportedModelError, match=r"std_mean.*reduces over dims 0; only a reduction over the channel"):
        nc.prune_channels(OverBatch().eval(), X, ratio=0.3)


@pytest.mark.parametrize("name", ["HardNet", "HardNet8", "SOSNet"])
def test_kornia_descriptors_prune(name: str) -> None:
    feature = pytest.importorskip("kornia.feature")
    torch.manual_seed(0)
    model = getattr(feature, name)(pretrained=False)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    pruned_equals_masked(model, x, randomise_bn=True)
