"""nc.save of a model with a parametrized weight (``weight_norm``: wav2vec 2.0 / HuBERT / WavLM's positional conv).

Was refused naming ``_weight_norm_compat_hook`` (and the run-time class ``ParametrizedConv1d`` cannot be named
by a file either). The file now holds the weight the parametrization computes; the caller's model keeps its
parametrization (``remove_parametrizations`` would delete the property from the class it shares with a copy).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

import netcompress as nc


def test_weight_norm_conv_saves_as_its_computed_weight_and_the_model_keeps_it(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Conv1d(4, 6, 3, padding=1), dim=2), nn.GELU()).eval()
    x = torch.randn(2, 4, 9)
    expected = model(x)
    summary = nc.save(model, tmp_path / "m.nc", example_inputs=x)
    assert summary["parametrizations_removed"] == {"0": ["weight"]}
    assert parametrize.is_parametrized(model[0], "weight")  # the caller's model is unchanged
    assert torch.equal(model(x), expected)
    back = nc.load(tmp_path / "m.nc")
    assert type(back[0]) is nn.Conv1d and not parametrize.is_parametrized(back[0])
    assert torch.equal(back(x), expected)
    assert torch.equal(back[0].weight, model[0].weight)
