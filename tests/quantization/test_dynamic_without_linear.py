"""nc.quantize(mode="dynamic") on a model without nn.Linear (zoo round 4, session 12: U-Nets) returned the model
unquantized; exporting it said "int8=True needs a fake-quantized model (nc.quantize(...))" to a user who had
called nc.quantize. The quantize call now refuses, naming the layers the model has and the modes that take them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import ConfigError


def test_dynamic_on_a_convolutional_model_is_refused_naming_its_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 3, 2, stride=2)).eval()
    with pytest.raises(ConfigError, match=r"mode='dynamic' quantizes Linear layers; Sequential has none "
                                          r"\(its quantizable layers: Conv2d\); use mode='static'"):  # fmt: skip
        nc.quantize(model, mode="dynamic")


def test_dynamic_with_a_linear_still_quantizes():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    q = nc.quantize(model, mode="dynamic")
    x = torch.randn(2, 3, 8, 8)
    assert q(x).shape == (2, 2) and not torch.equal(q(x), model(x))
