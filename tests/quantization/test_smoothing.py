"""SmoothQuant: outliers migrate from activations into weights, the float function unchanged, W8A8 better."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, apply
from netcompress.quantization import PTQStaticConfig, quantize
from netcompress.quantization.smoothing import scale_groups, smooth_activations


class OutlierNet(nn.Module):
    """LayerNorm -> q/k/v-like Linears sharing its output -> sum -> ReLU -> Linear.

    4 of 64 LayerNorm channels are 40x larger than the rest, and the weights reading them 40x smaller
    (as a trained transformer's are): per-tensor int8 activations spend their range on 4 channels.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(64)
        self.q, self.k, self.v = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 16)
        with torch.no_grad():
            self.norm.weight.fill_(1.0)
            self.norm.weight[:4] = 40.0
            self.norm.bias.normal_(0, 0.1)
            for fc in (self.q, self.k, self.v):
                fc.weight[:, :4] /= 40.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        y = self.q(h) + self.k(h) * 0.5 + self.v(h) * 0.25
        return self.down(torch.relu(self.up(y)))


class Residual(nn.Module):
    """The LayerNorm output also feeds the residual add: 1/s cannot fold into it."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return h + self.fc(h)


def calib(n: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 64, generator=gen), torch.zeros(32)) for _ in range(n)]


def sqnr_db(model: nn.Module, reference: nn.Module, batches) -> float:
    with torch.no_grad():
        signal = sum(float(reference(x).pow(2).sum()) for x, _ in batches)
        noise = sum(float((model(x) - reference(x)).pow(2).sum()) for x, _ in batches)
    return 10 * math.log10(signal / noise)


def test_groups_fold_into_the_layernorm_and_the_previous_linear():
    groups, unfoldable = scale_groups(OutlierNet())
    assert groups == [
        {"linears": ["q", "k", "v"], "producer": "norm", "kind": "layernorm"},
        {"linears": ["down"], "producer": "up", "kind": "linear"},
    ]
    assert unfoldable == {"up": "produced by call_function <built-in function add>"}
    groups, unfoldable = scale_groups(Residual())
    assert groups == [] and unfoldable == {"fc": "its input norm also feeds other ops"}


def test_smoothing_leaves_the_float_function_unchanged():
    model = OutlierNet().eval()
    smoothed, info = smooth_activations(model, calib(), alpha=0.5)
    assert info["smoothed"] == {"norm": ["q", "k", "v"], "up": ["down"]}
    assert set(info["skipped"]) == {"up"}
    x = torch.randn(16, 64)
    with torch.no_grad():
        assert torch.allclose(smoothed(x), model(x), atol=1e-5)
        # the outlier channels of the LayerNorm output shrank
        ratio = smoothed.norm.weight.abs().max() / smoothed.norm.weight.abs().min()
    assert ratio < 0.25 * 40.0
    assert torch.equal(model.norm.weight[:4], torch.full((4,), 40.0))  # the input model is untouched


def test_smoothquant_raises_w8a8_sqnr_on_outlier_inputs():
    model = OutlierNet().eval()
    held_out = calib(seed=7)
    plain = quantize(model, calib(), bits=8, act_bits=8, act_observer="minmax", num_calib_batches=4)
    result = apply(
        model,
        PTQStaticConfig(bits=8, act_bits=8, act_observer="minmax", num_calib_batches=4, smooth=0.5),
        MethodData(calib_loader=calib()),
    )
    before, after = sqnr_db(plain, model, held_out), sqnr_db(result.model, model, held_out)
    assert result.summary["smooth"]["smoothed"] == {"norm": ["q", "k", "v"], "up": ["down"]}
    # measured 11.2 dB -> 31.1 dB (alpha 0.3: 33.5 dB)
    assert before < 15.0 and after > 28.0, (before, after)


def test_smooth_is_off_by_default_and_checked():
    assert PTQStaticConfig().smooth == 0.0
    with pytest.raises(ConfigError, match="smooth=1.5"):
        PTQStaticConfig(smooth=1.5)


def test_untraceable_models_are_left_alone_with_the_reason():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.fc(x)
            return -self.fc(x)

    smoothed, info = smooth_activations(Branchy(), [torch.randn(4, 8)], alpha=0.5)
    assert info["smoothed"] == {} and "torch.fx cannot trace" in info["skipped"]["fc"]
