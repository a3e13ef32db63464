"""Metrics hooks return at epoch end join the history rows; two hooks reporting one key (two distillation terms of
one kind) both reach the row, the later under ``key_2``, ``key_3``, ... instead of overwriting the first."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netcompress.training import TrainConfig, fit
from netcompress.training.hooks import call_hooks


class Term:
    def __init__(self, value: float) -> None:
        self.value = value

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {"term": self.value, f"only_{self.value:g}": epoch}


def test_call_hooks_keeps_every_hooks_value_of_a_shared_key():
    merged = call_hooks([Term(1.0), object(), Term(2.0), Term(3.0)], "epoch_end", None, 4)
    assert merged == {"term": 1.0, "only_1": 4, "term_2": 2.0, "only_2": 4, "term_3": 3.0, "only_3": 4}


def test_two_hooks_reporting_one_key_both_reach_the_history_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    history = fit(model, loader, config=TrainConfig(epochs=1, lr=0.01, progress=False), hooks=[Term(1.0), Term(2.0)])
    row = history.rows[-1]
    assert (row["term"], row["term_2"]) == (1.0, 2.0)
