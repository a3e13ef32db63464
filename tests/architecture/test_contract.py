"""The contract for architecture/depthwise_separable: the verb and ``apply`` give the same model;
the input is untouched."""

from __future__ import annotations

import copy

import torch
from torch import nn

from netcompress.architecture import DepthwiseSeparableConfig, to_depthwise_separable
from netcompress.core.methods import MethodData, apply, method_for
from tests.state_checks import same_weights

FIELDS = {"skip_first": False, "activation": "relu", "init": "svd"}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1))


def test_depthwise_separable_verb_and_method_give_the_same_model():
    x = torch.randn(1, 3, 8, 8)
    torch.manual_seed(1)
    new, summary = to_depthwise_separable(_model(), example_inputs=x, **FIELDS)
    assert method_for(DepthwiseSeparableConfig).key == "architecture/depthwise_separable"
    torch.manual_seed(1)
    result = apply(
        _model(), DepthwiseSeparableConfig.from_dict(FIELDS, where="test"), MethodData(example_inputs=x)
    )
    assert same_weights(new, result.model) and summary == result.summary
    assert summary["converted"] == 2


def test_to_depthwise_separable_leaves_its_argument_bit_identical():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    new, _ = to_depthwise_separable(model, skip_first=False)
    assert new is not model and before.keys() == model.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
