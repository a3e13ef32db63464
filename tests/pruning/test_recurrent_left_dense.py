"""Unstructured pruning of a model with LSTM/GRU layers prunes its Linear/Conv weights only; the summary used
to say ``model_sparsity: 0.5`` for an LSTM classifier whose 5,475 parameters held 48 zeros. Now the recurrent
weight matrices count in ``model_sparsity`` (and ``sparsity_report``), are named under ``skipped``, and a
warning says they stayed dense."""

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.pruning.masks import recurrent_weights, sparsity_report


class LstmClassifier(nn.Module):
    def __init__(self, cell=nn.LSTM):
        super().__init__()
        self.rnn = cell(8, 32, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_summary_counts_and_names_the_dense_recurrent_weights(cell):
    torch.manual_seed(0)
    model = LstmClassifier(cell)
    with pytest.warns(UserWarning, match="4 recurrent weight matrices .* left dense"):
        summary = nc.prune_unstructured_(model, amount=0.5, method="l1", scope="global")
    recurrent = sum(getattr(model.rnn, n).numel() for n in recurrent_weights(model.rnn))
    assert summary["zero_params"] == 96 and summary["global_sparsity"] == 0.5  # the head: 192 weights
    assert summary["model_sparsity"] == pytest.approx(96 / (192 + recurrent))
    assert sorted(summary["skipped"]) == sorted(
        f"rnn.{n}" for n in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l0_reverse", "weight_hh_l0_reverse")
    )
    report = sparsity_report(model)
    assert report["total"] == 192 + recurrent and report["zeros"] == 96
    assert report["per_layer"]["rnn.weight_hh_l0"] == 0.0


def test_models_without_recurrent_layers_have_nothing_skipped():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    summary = nc.prune_unstructured_(model, amount=0.5, method="l1", scope="global")
    assert summary["skipped"] == {} and summary["model_sparsity"] == 0.5
    assert recurrent_weights(model[0]) == []
