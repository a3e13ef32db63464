"""Transformer-pruning importances (magnitude, Wanda, Taylor): each removes the unit a case built for it says.

The FFN case is built so each importance picks a different, known neuron.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.pruning import TransformerPruneConfig
from netcompress.pruning.transformer_pruning import transformer_prune
from tests.pruning.transformer_cases import IDS, MLP, HandModel
from tests.tiny_hf import hf_family as _hf


def _importance_case():
    """fc1/fc2 FFN with 4 neurons built so that magnitude, Wanda and Taylor each find a different weakest one.

    Neuron 0: tiny weights but a huge input (lowest magnitude); neuron 1: big weights on an input that is
    almost always 1e-3 (lowest activation x weight); neuron 2: big and active, but it adds the same amount to
    both logits, which cross-entropy cannot see (zero Taylor score); neuron 3: ordinary.
    """
    model = nn.Sequential()
    model.add_module("mlp", MLP(dim=4, width=4))
    model.mlp.act = nn.ReLU()
    model.mlp.fc2 = nn.Linear(4, 2)
    with torch.no_grad():
        model.mlp.fc1.weight.copy_(torch.diag(torch.tensor([0.1, 3.0, 2.0, 2.0])))
        model.mlp.fc1.bias.zero_()
        model.mlp.fc2.weight.copy_(torch.tensor([[0.1, 2.0, 1.5, 2.0], [-0.1, -2.0, 1.5, -1.0]]))
        model.mlp.fc2.bias.zero_()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 4, generator=g) + 0.5
    x[:, 0] *= 100
    x[:, 1] = 1e-3
    y = torch.randint(0, 2, (64,), generator=g)
    return model.eval(), [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]


@pytest.mark.parametrize(("importance", "removed"), [("magnitude", 0), ("wanda", 1), ("taylor", 2)])
def test_each_importance_removes_the_unit_it_should(importance, removed):
    model, loader = _importance_case()
    config = TransformerPruneConfig(heads=0.0, ffn=0.25, importance=importance)
    small, summary = transformer_prune(model, loader[0][0], config, loader=loader)
    assert summary["ffn"][0]["kept"] == [n for n in range(4) if n != removed]
    assert small.mlp.fc1.out_features == 3


def test_magnitude_removes_a_zero_head_first():
    model = HandModel().eval()
    with torch.no_grad():
        for layer in (model.attn.q, model.attn.k, model.attn.v):
            layer.weight[16:24] = 0
            layer.bias[16:24] = 0
        model.attn.out.weight[:, 16:24] = 0
    _, summary = transformer_prune(model, IDS, TransformerPruneConfig(heads=0.25, ffn=0.0))
    assert summary["heads"][0]["kept"] == [0, 1, 3]


def test_taylor_and_wanda_read_dict_batches_with_labels():
    model, inputs = _hf("bert")
    batches = [{**inputs, "labels": torch.tensor([0, 2])}, {**inputs, "labels": torch.tensor([1, 1])}]
    for importance in ("taylor", "wanda"):
        small, summary = transformer_prune(
            model,
            inputs,
            TransformerPruneConfig(heads=0.5, ffn=0.5, hidden=0.25, importance=importance),
            loader=batches,
        )
        assert summary["hidden_after"] == 24 and [r["after"] for r in summary["heads"]] == [2, 2]
    with pytest.raises(ConfigError, match="labelled batches"):
        transformer_prune(model, inputs, TransformerPruneConfig(importance="taylor"), loader=[inputs])
