"""The contract for dynamic/early_exit and dynamic/slimmable: the verbs and ``apply`` give the
same model; the verbs leave their argument bit-identical (an EarlyExitModel/SlimmableModel too)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from netcompress import data, models
from netcompress.core.methods import MethodData, apply, method_for
from netcompress.dynamic import (
    EarlyExitConfig,
    SlimmableConfig,
    add_early_exits,
    make_slimmable,
    with_early_exits,
    with_slimmable_width,
)
from tests.state_checks import same_weights

X = torch.randn(2, 1, 8, 8)
CASES = [
    (with_early_exits, EarlyExitConfig, "dynamic/early_exit",
     {"exits": ["features.5"], "thresholds": [0.0, 0.9], "epochs": 1, "deploy_threshold": 0.9}),
    (with_slimmable_width, SlimmableConfig, "dynamic/slimmable",
     {"widths": [0.5, 1.0], "epochs": 1, "deploy_width": 0.5}),
]  # fmt: skip


def _loaders():
    bundle = data.load("synthetic", num_samples=64, input_shape=(1, 8, 8), num_classes=4, separation=2.0)
    return bundle.loaders(batch_size=32, eval_batch_size=64)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return models.create("digits_cnn", num_classes=4)


@pytest.mark.parametrize("verb, config_cls, key, fields", CASES)
def test_dynamic_verb_and_method_give_the_same_model(verb, config_cls, key, fields):
    train, val = _loaders()
    new, summary = verb(_model(), train, val_loader=val, example_inputs=X, progress=False, **fields)
    assert method_for(config_cls).key == key
    train, val = _loaders()
    config = config_cls.from_dict({**fields, "progress": False}, where="test")
    result = apply(_model(), config, MethodData(train_loader=train, val_loader=val, example_inputs=X))
    assert same_weights(new, result.model)
    assert summary["curves"] == result.summary["curves"] and summary["plot"] is None


@pytest.mark.parametrize("verb, config_cls, key, fields", CASES)
def test_dynamic_verbs_leave_their_argument_bit_identical(verb, config_cls, key, fields):
    plain = _model()
    wrapped = (
        add_early_exits(plain, exits=["features.5"], example_inputs=X[:1])
        if config_cls is EarlyExitConfig
        else make_slimmable(plain, widths=[0.5, 1.0], example_inputs=X[:1])
    )
    for model in (plain, wrapped):
        before = copy.deepcopy(model.state_dict())
        train, val = _loaders()
        new, _ = verb(model, train, val_loader=val, example_inputs=X, progress=False, **fields)
        assert new is not model and before.keys() == model.state_dict().keys()
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
