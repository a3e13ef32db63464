"""Channel pruning around nn.LSTM / GRU / RNN (zoo round 4, session 12): any model holding one was refused
("cannot handle module 'rnn' of type LSTM"). A recurrent layer now reads its input features whole and gives new
features kept whole; the layers around it prune (a Conv1d front end, an MLP after it). Not pruned: the recurrent
layer's own hidden size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError
from netcompress.pruning import masked_reference
from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning


class AroundLSTM(nn.Module):
    def __init__(self, cell: str = "LSTM") -> None:
        super().__init__()
        self.inp = nn.Linear(6, 12)
        self.rnn = getattr(nn, cell)(12, 10, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(20, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        y, _ = self.rnn(torch.relu(self.inp(x)))
        return self.head(torch.relu(self.fc(y[:, -1])))


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_layers_after_a_recurrent_layer_prune_and_it_stays_whole(cell):
    torch.manual_seed(0)
    model, x = AroundLSTM(cell).eval(), torch.randn(3, 5, 6)
    plan = plan_channel_pruning(model, x, ratio=0.5)
    small = apply_channel_plan(model, plan, x)
    assert small.fc.out_features == 8 and small.head.in_features == 8
    assert small.inp.out_features == 12 and small.rnn.hidden_size == 10  # read whole / not pruned
    assert torch.allclose(small(x), masked_reference(model, plan.keep_indices())(x), atol=1e-6)
    reasons = " ".join(g.reason for g in plan.graph.groups)
    assert f"{cell} 'rnn' reads them all" in reasons


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.rnn = nn.LSTM(8, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.rnn(self.embed(ids))[0][:, -1])


def test_nothing_around_the_lstm_to_prune_is_refused_naming_it():
    with pytest.raises(UnsupportedModelError, match=r"no channel group of Classifier.*LSTM 'rnn': its output"):
        nc.prune_channels(Classifier().eval(), torch.randint(0, 20, (2, 5)), ratio=0.5)
