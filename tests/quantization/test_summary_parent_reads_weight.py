"""The PyTorch-side quantize summary is honest about layers whose parent reads their weight (Z4, session 11).

``nn.MultiheadAttention`` hands ``out_proj.weight`` to its functional forward, so the wrapped ``out_proj``
never runs its quantized forward: the summary counted it among the quantized layers (and its weight at
8 bits). It is now listed under ``kept_float`` with the reason and counted at 4 bytes a parameter; a
parent doing the same in user code is found by running the calibration batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc
from netcompress.core.methods import MethodData, apply
from netcompress.quantization.modules import quantizers
from netcompress.quantization.ptq import PTQStaticConfig
from netcompress.quantization.summary import NOT_CALLED, READ_BY_PARENT, quantization_summary


class ReadsWeight(nn.Module):
    """``proj`` is never called: its parent uses ``proj.weight`` directly (and branches on data, so torch.fx
    cannot trace it and the layers are wrapped in place, as in WavLM)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().sum() > 0:
            x = F.linear(x, self.proj.weight, self.proj.bias).relu()
        return self.head(x)


def _loader(*shape: int) -> list:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return [(x, torch.zeros(shape[0], dtype=torch.long))]


@pytest.mark.parametrize("mode", ["static", "dynamic", "weight_only"])
def test_multihead_attention_out_proj_is_kept_float_not_quantized(mode):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    summary = quantization_summary(nc.quantize(layer, _loader(4, 5, 16), mode=mode))
    assert sorted(summary["layers"]) == ["linear1", "linear2"] and summary["num_quantized_layers"] == 2
    assert summary["kept_float"] == {"self_attn.out_proj": READ_BY_PARENT}
    if mode != "weight_only":  # 8-bit per channel: linear1/linear2 weights 1,024 B + 48 scales x 8 B; the
        # other 1,200 parameters (in_proj, out_proj 272, biases, norms) float: 4,800 B (out_proj counted
        # quantized read 5,568)
        assert summary["weight_bytes"] == 1024 + 48 * 8 + 4 * 1200 == 6208


def test_a_user_parent_reading_its_childs_weight_is_found_on_the_calibration_batch():
    torch.manual_seed(0)
    loader = _loader(6, 8)
    result = apply(ReadsWeight().eval(), PTQStaticConfig(), MethodData(calib_loader=loader))
    assert result.summary["kept_float"] == {"proj": NOT_CALLED}
    assert list(result.summary["layers"]) == ["head"]
    # 8-bit head: 24 B + 3 scales x 8 B; proj's 72 and head's 3 bias parameters float: 300 B
    assert result.summary["weight_bytes"] == 24 + 24 + 4 * 75
    assert "proj" in quantization_summary(result.model)["layers"]  # without inputs it cannot be seen
    qs = list(quantizers(result.model).values())
    ranges = [q.scale.clone() for q in qs]
    for q in qs:  # even quantizers still observing (QAT) keep their ranges through the probe
        q.unfreeze()
    quantization_summary(result.model, inputs=torch.randn(6, 8) * 100)
    assert all(torch.equal(a, q.scale) for a, q in zip(ranges, qs)) and all(q.observing for q in qs)
    result.model(torch.randn(6, 8) * 100)  # (an observing forward does move them)
    assert not all(torch.equal(a, q.scale) for a, q in zip(ranges, qs))
