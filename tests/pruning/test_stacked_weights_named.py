"""One-shot pruning (Wanda, N:M) of a model with stacked 3-D weights (mixture-of-experts ``experts.gate_up_proj``).

Only Linear/Conv weights are pruned; Mixtral's fused expert weights (74% of the zoo's tiny Mixtral) stayed dense
while the summary listed nothing: they are now named in ``skipped`` with the reason.
"""

from __future__ import annotations

import torch
from torch import nn

import netcompress as nc


class Experts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(2, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.gate_up_proj[0] + x @ self.gate_up_proj[1]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.experts = Experts()
        self.conv = nn.Conv1d(8, 8, 1)  # a 3-D conv weight is a prunable weight, not a stacked one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.experts(self.fc(x)).unsqueeze(-1)).squeeze(-1)


def test_stacked_expert_weights_are_named_as_left_dense():
    torch.manual_seed(0)
    calib = [torch.randn(4, 8) for _ in range(2)]
    for prune in (
        lambda m: nc.prune_wanda_(m, calib, amount=0.5),
        lambda m: nc.prune_n_m_(m, calib, n=2, m=4),
    ):
        model = Tiny()
        before = model.experts.gate_up_proj.detach().clone()
        s = prune(model)
        assert list(s["skipped"]) == ["experts.gate_up_proj"]
        assert "3-D weight of Experts" in s["skipped"]["experts.gate_up_proj"]
        assert torch.equal(model.experts.gate_up_proj, before)
        assert s["per_layer"]["fc"] == 0.5
