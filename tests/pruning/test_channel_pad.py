"""``F.pad`` on the channel dim (pytorchcv's PyramidNet widens its shortcut with zero channels,
``F.pad(identity, (0, 0, 0, 0, 0, extra))``): channel pruning refused the whole model ("expected it to keep the 16
channels"). The input's channels now keep their ids through the pad and the added constant channels are new ones
that are never removed (the pad widths are fixed numbers); other padding of the channel dim is refused by name."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning


class PyramidUnit(nn.Module):
    def __init__(self, mode: str = "constant") -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 12, 3, padding=1)
        self.head = nn.Linear(12, 3)
        self.mode = mode

    def forward(self, x):
        identity = torch.relu(self.stem(x))
        pad = (0, 0, 0, 0, 1, 3) if self.mode == "constant" else (0, 0, 0, 0, 0, 4)
        return self.head((self.body(identity) + F.pad(identity, pad, mode=self.mode)).mean((2, 3)))


def test_channels_are_followed_through_a_channel_pad():
    torch.manual_seed(0)
    model, x = PyramidUnit().eval(), torch.randn(2, 3, 8, 8)
    plan = plan_channel_pruning(model, x, ratio=0.5)
    small = apply_channel_plan(model, plan, x)
    kept = plan.keep_indices()["stem"]["out"]
    assert small.stem.out_channels == 4 and small.body.in_channels == 4
    assert small.body.out_channels == 8 and small.head.in_features == 8  # 4 kept + the 1 + 3 padded ones
    body_kept = plan.keep_indices()["body"]["out"]
    assert body_kept == [0, *(1 + k for k in kept), 9, 10, 11]
    ref = copy.deepcopy(model)  # the original with the removed stem channels zeroed
    mask = torch.zeros(8)
    mask[kept] = 1
    ref.stem.register_forward_hook(lambda m, a, out: out * mask[:, None, None])
    ref.body.register_forward_hook(lambda m, a, out: out * F.pad(mask, (1, 3), value=1.0)[:, None, None])
    assert torch.allclose(small(x), ref(x), atol=1e-5)


def test_a_reflecting_channel_pad_is_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="pads or crops the channel dim"):
        plan_channel_pruning(PyramidUnit("replicate").eval(), torch.randn(2, 3, 8, 8), ratio=0.5)
