"""``torch.zeros_like`` of a channel tensor (pytorchcv's DIA-ResNet starts its attention LSTM from
``h = torch.zeros_like(w)``, ``w`` the pooled features): channel pruning refused the whole model ("this op is not
known to keep or couple channels"). Its output has its input's channels (zeros whatever is removed), so the
channels are followed through it."""

from __future__ import annotations

import copy

import torch
from torch import nn

from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning


class ZeroStateAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fx, self.fh = nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        w = y.mean((2, 3))
        h = torch.zeros_like(w)
        gate = torch.sigmoid(self.fx(w) + self.fh(h))
        return self.head((y * gate[:, :, None, None]).mean((2, 3)))


def test_channels_are_followed_through_zeros_like():
    torch.manual_seed(0)
    model, x = ZeroStateAttention().eval(), torch.randn(2, 3, 8, 8)
    plan = plan_channel_pruning(model, x, ratio=0.5)
    small = apply_channel_plan(model, plan, x)
    kept = plan.keep_indices()["conv"]["out"]
    assert small.conv.out_channels == 4 and small.fh.in_features == 4 and small.head.in_features == 4
    ref = copy.deepcopy(model)  # the original with the removed conv channels zeroed
    mask = torch.zeros(8)
    mask[kept] = 1
    ref.conv.register_forward_hook(lambda m, a, out: out * mask[:, None, None])
    assert torch.allclose(small(x), ref(x), atol=1e-6)
