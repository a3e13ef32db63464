"""A module attribute that is a numpy scalar (MONAI's patch embedding: ``self.n_patches = np.prod(...)``, an
``np.int64`` its forward reads): ``nc.save`` refused ("a int64 has no attribute dict to write as data"); it is
written as its value and dtype and comes back as the same numpy type."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import netcompress as nc


class PatchTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, stride=4)
        self.n_patches = np.prod([16 // 4, 16 // 4])  # np.int64
        self.scale = np.float32(0.5)
        self.pos = nn.Parameter(torch.randn(1, int(self.n_patches), 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)
        return (t + self.pos).reshape(x.shape[0], self.n_patches, 8).mean(1) * float(self.scale)


def test_numpy_scalars_round_trip_with_their_types(tmp_path):
    torch.manual_seed(0)
    model, x = nn.Sequential(PatchTokens(), nn.Linear(8, 3)).eval(), torch.randn(2, 3, 16, 16)
    nc.save(model, tmp_path / "m.nc", example_inputs=x)
    back = nc.load(tmp_path / "m.nc", allow_modules=["tests"])
    assert type(back[0].n_patches) is np.int64 and back[0].n_patches == 16
    assert type(back[0].scale) is np.float32 and back[0].scale == np.float32(0.5)
    assert torch.equal(back(x), model(x))
