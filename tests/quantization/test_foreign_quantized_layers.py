"""A model another library already quantized (brevitas' QuantLinear / QuantConv2d / QuantReLU subclass nn.Linear /
nn.Conv2d) is refused by every quantization mode, naming the layer, its library and what to do instead. Before,
static PTQ said the calibration batches "do not fit the model", int4 and the accuracy-aware search crashed
(``'IntQuantTensor' object has no attribute 'dtype'``) (zoo round 7)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError


class QuantLinear(nn.Linear):  # stands for brevitas.nn.QuantLinear where brevitas is absent (CI)
    pass


QuantLinear.__module__ = "brevitas.nn.quant_linear"


def _calib() -> list[tuple[torch.Tensor]]:
    return [(torch.randn(4, 16),) for _ in range(2)]


@pytest.mark.parametrize("mode", ["static", "dynamic", "weight_only"])
def test_every_mode_refuses_a_layer_from_a_quantization_library(mode):
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), QuantLinear(8, 4))
    bits = 4 if mode == "weight_only" else 8
    with pytest.raises(UnsupportedModelError, match=r"layer '2' is QuantLinear from brevitas\.nn\.quant_linear "
                                                   r"\(1 such modules\).*brevitas' own exporter"):  # fmt: skip
        nc.quantize(model, _calib(), mode=mode, bits=bits)


def test_a_float_model_still_quantizes():
    q = nc.quantize(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), _calib(), bits=8)
    assert sum(type(m).__name__ == "QuantLinear" and type(m).__module__.startswith("netcompress")
               for m in q.modules()) == 2  # fmt: skip


@pytest.mark.skipif(importlib.util.find_spec("brevitas") is None, reason="brevitas is not installed")
def test_a_brevitas_model_is_refused_naming_its_outermost_layers():
    import brevitas.nn as qnn

    model = nn.Sequential(qnn.QuantConv2d(3, 8, 3, weight_bit_width=4), qnn.QuantReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), qnn.QuantLinear(8, 4, bias=True, weight_bit_width=4))  # fmt: skip
    calib = [(torch.randn(2, 3, 8, 8),)]
    for kwargs in ({"bits": 8}, {"mode": "weight_only", "bits": 4}):
        with pytest.raises(UnsupportedModelError, match=r"'0' is QuantConv2d from brevitas.* \(3 such modules\)"):
            nc.quantize(model, calib, **kwargs)
    with pytest.raises(UnsupportedModelError, match="already quantized"):
        nc.quantize_accuracy_aware(model, calib, calib, mode="dynamic", metric="embedding", min_cosine=0.9)
