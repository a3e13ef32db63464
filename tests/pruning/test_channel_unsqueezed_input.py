"""Channel pruning of a model whose first conv reads ``wave.unsqueeze(1)`` (zoo round 4, session 12: a raw-
waveform Conv1d front end): the conv's output inherited the channel dim of its unsqueezed input (2) and was refused
("internal channel bookkeeping mismatch (16 ids for shape (2, 16, 79))"). A conv's output channels are dim 1."""

from __future__ import annotations

import copy

import torch
from torch import nn

from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning


class WaveFront(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.front = nn.Sequential(
            nn.Conv1d(1, 16, 10, stride=5), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Conv1d(16, 24, 3, stride=2), nn.BatchNorm1d(24), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(24, 5)

    def forward(self, wave):
        return self.head(self.front(wave.unsqueeze(1)).mean(-1))


def test_a_conv_on_an_unsqueezed_waveform_prunes_like_masking():
    torch.manual_seed(0)
    model, x = WaveFront().eval(), torch.randn(3, 400)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    plan = plan_channel_pruning(model, x, ratio=0.5)
    small = apply_channel_plan(model, plan, x)
    assert (small.front[0].out_channels, small.front[3].out_channels, small.head.in_features) == (8, 12, 12)
    masked = copy.deepcopy(model)
    for name, module in masked.named_modules():
        kept = plan.keep_indices().get(name, {}).get("in")
        if kept is not None and isinstance(module, (nn.Conv1d, nn.Linear)):
            mask = torch.zeros(module.weight.shape[1])
            mask[kept] = 1
            mask = mask.view((1, -1, 1) if isinstance(module, nn.Conv1d) else (1, -1))
            module.register_forward_pre_hook(lambda m, a, mask=mask: (a[0] * mask,))
    assert torch.allclose(small(x), masked(x), atol=1e-5)
