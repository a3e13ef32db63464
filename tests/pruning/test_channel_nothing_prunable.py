"""prune_channels on a model none of whose channel groups can be pruned returned an unpruned copy without a word
(zoo round 4, session 12: per-channel gains read outside any module pin every group). It is now an
UnsupportedModelError naming each group's producer and why it is kept whole."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError


class Gains(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 8))
        self.fc = nn.Linear(8, 6)
        self.fc_gain = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x) * self.gain.view(1, -1, 1, 1)).mean((2, 3))
        return self.head(torch.relu(self.fc(h) * self.fc_gain))


def test_nothing_prunable_is_refused_naming_each_group():
    model, x = Gains().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedModelError, match=r"no channel group of Gains can be pruned") as err:
        nc.prune_channels(model, x, ratio=0.3)
    assert "fc: call_function 'mul'" in str(err.value) and "per-channel constant or parameter" in str(err.value)
    assert "head: they are the model's output" in str(err.value)


def test_ratio_zero_is_still_a_copy():
    model, x = Gains().eval(), torch.randn(2, 3, 8, 8)
    small = nc.prune_channels(model, x, ratio=0.0)
    assert torch.equal(small(x), model(x))
