"""A model whose main output is one value per sample or a chosen action (a stable-baselines3 actor-critic returns
``(actions, values, log_prob)``): the accuracy-aware search and soft-target distillation name the output they
cannot score; before, both failed with a bare ``IndexError: Dimension out of range`` (zoo round 7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import ConfigError


class ActorCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.pi, self.vf = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.body(obs))
        return self.pi(h).argmax(1), self.vf(h)  # deterministic action, value


def _batches() -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 8, generator=g),) for _ in range(2)]


def test_accuracy_aware_names_an_output_of_chosen_actions():
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"main output is float32 \(8,\)"):
        nc.quantize_accuracy_aware(ActorCritic(), _batches(), _batches(), mode="dynamic", metric="embedding",
                                   min_cosine=0.99, max_trials=2)  # fmt: skip


def test_distillation_names_an_output_of_chosen_actions():
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"soft targets need class scores .* int64 \(4,\)"):
        nc.distill(ActorCritic(), ActorCritic(), _batches(), epochs=1, lr=0.01, progress=False)


def test_class_scores_still_distill():
    torch.manual_seed(0)
    student, teacher = nn.Linear(8, 4), nn.Linear(8, 4)
    before = student.weight.detach().clone()
    nc.distill(student, teacher, _batches(), epochs=1, lr=0.1, progress=False)
    assert not torch.equal(student.weight, before)
