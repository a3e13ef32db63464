"""transformers' FNet mixes tokens with ``functools.partial(torch.fft.fftn, dim=(1, 2))``: ``nc.save`` refused it
("'fft_fftn' is not a function of torch, torch.nn.functional, operator or math"). ``torch.fft`` and ``torch.linalg``
(pure math) are functions a saved model may name."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import CheckpointError
from netcompress.export.allowlist import find_function


class FourierMix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)
        self.mix = functools.partial(torch.fft.fftn, dim=(1, 2))
        self.norm = torch.linalg.vector_norm

    def forward(self, x):
        y = self.mix(self.proj(x)).real
        return y / (1 + self.norm(y, dim=-1, keepdim=True))


def test_fft_and_linalg_functions_round_trip(tmp_path):
    torch.manual_seed(0)
    model, x = FourierMix().eval(), torch.randn(2, 5, 6)
    nc.save(model, tmp_path / "m.nc", example_inputs=x)
    back = nc.load(tmp_path / "m.nc", allow_modules=["tests"])
    assert back.mix.func is torch.fft.fftn and back.norm is torch.linalg.vector_norm
    assert torch.equal(back(x), model(x))


def test_private_names_stay_refused():
    with pytest.raises(CheckpointError, match="does not allow"):
        find_function("torch.fft:_private")
