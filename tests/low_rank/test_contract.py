"""The contract for low_rank/svd: ``factorize`` and ``apply`` give the same model; the input is untouched."""

from __future__ import annotations

import copy

import torch
from torch import nn

from netcompress.core.methods import MethodData, apply, method_for
from netcompress.low_rank import FactorizeConfig, factorize
from tests.state_checks import same_weights

FIELDS = {"energy": 0.8, "conv_mode": "spatial", "exclude": ["3"]}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 10))


def test_factorize_verb_and_method_give_the_same_model():
    x = torch.randn(1, 3, 8, 8)
    small, summary = factorize(_model(), example_inputs=x, **FIELDS)
    assert method_for(FactorizeConfig).key == "low_rank/svd"
    result = apply(_model(), FactorizeConfig.from_dict(FIELDS, where="test"), MethodData(example_inputs=x))
    assert same_weights(small, result.model) and summary == result.summary
    assert summary["factorized"] == 1


def test_factorize_leaves_its_argument_bit_identical():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    small, _ = factorize(model, energy=0.5)
    assert small is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert before.keys() == model.state_dict().keys()
