"""GPTQ rounding: lower layer output error than round-to-nearest on calibration data, codes on the grid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.methods import MethodData, apply
from netcompress.quantization import WeightOnlyConfig, quantize
from netcompress.quantization.blockwise import BlockwiseFakeQuantize, weight_codes
from netcompress.quantization.gptq import gptq_layer, output_error
from netcompress.quantization.qparams import QuantSpec


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10)).eval()


def correlated_batches(n: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Inputs with correlated features (a low-rank mix): GPTQ's compensation has something to use."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(16, 64, generator=torch.Generator().manual_seed(99))
    return [
        (torch.randn(64, 16, generator=gen) @ mix + 0.1 * torch.randn(64, 64, generator=gen), torch.zeros(64))
        for _ in range(n)
    ]


def first_layer_error(qmodel: nn.Module, model: nn.Module, batches) -> float:
    """||X W_q^T - X W^T||^2 / ||X W^T||^2 of the first Linear on the calibration inputs."""
    w = model[0].weight.detach()
    wq = qmodel.get_submodule("0").quantized_weight()
    x = torch.cat([b[0] for b in batches])
    return float((x @ (wq - w).t()).pow(2).sum() / (x @ w.t()).pow(2).sum())


@pytest.mark.parametrize("block_size", [32, 0])
def test_gptq_output_error_is_below_round_to_nearest(block_size):
    model, batches = mlp(), correlated_batches()
    rtn = quantize(model, mode="weight_only", bits=4, block_size=block_size)
    result = apply(
        model,
        WeightOnlyConfig(bits=4, block_size=block_size, rounding="gptq"),
        MethodData(calib_loader=batches),
    )
    gptq = result.model
    ratio = first_layer_error(gptq, model, batches) / first_layer_error(rtn, model, batches)
    assert ratio < 0.3, ratio  # measured 0.14 (block 32 and per channel)
    layers = result.summary["gptq"]["layers"]
    assert list(layers) == ["0", "2", "4"] and layers["0"]["rows"] == 256
    for entry in layers.values():
        assert entry["gptq_error"] < 0.6 * entry["rtn_error"]
    # the summary's error is the same quantity measured independently above
    assert layers["0"]["gptq_error"] == pytest.approx(first_layer_error(gptq, model, batches), rel=1e-3)
    # and on held-out inputs the whole model is closer to float
    held = correlated_batches(seed=5)
    with torch.no_grad():
        err = {
            name: sum(float((q(x) - model(x)).pow(2).sum()) for x, _ in held)
            for name, q in [("rtn", rtn), ("gptq", gptq)]
        }
    assert err["gptq"] < 0.4 * err["rtn"], err  # measured 0.25x and 0.23x


def test_gptq_weights_stay_on_the_grid_the_export_writes():
    model, batches = mlp(), correlated_batches(2)
    q = quantize(model, batches, mode="weight_only", bits=3, block_size=16, rounding="gptq", act_order=True)
    layer = q.get_submodule("2")
    fq = layer.weight_fq
    assert isinstance(fq, BlockwiseFakeQuantize) and not fq.observing
    w = layer.layer.weight.detach()
    assert torch.equal(fq(w), w)  # the stored weight is exactly (q - zero_point) * scale
    codes = weight_codes(fq, w)
    assert codes.min() >= -4 and codes.max() <= 3


def test_gptq_layer_on_a_known_hessian_beats_rounding():
    torch.manual_seed(1)
    x = torch.randn(512, 8) @ torch.randn(8, 48) + 0.05 * torch.randn(512, 48)
    w = torch.randn(16, 48)
    H = (2 * x.t() @ x / x.shape[0]).double()
    fq = BlockwiseFakeQuantize(QuantSpec(bits=2), block_size=16)
    fq.observe(w)
    rtn = fq(w)
    q, scales, zps = gptq_layer(w, H, fq, damp=0.01, block_size=32, act_order=False)
    assert scales.shape == (16 * 3,) and zps.shape == (16 * 3,) and torch.all(zps == 0)
    assert output_error(q, w, H) < 0.5 * output_error(rtn, w, H)


def test_gptq_calibrates_a_model_called_with_a_dict():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 8)

        def forward(self, tokens, mask):
            return self.b(torch.relu(self.a(tokens)) * mask)

    torch.manual_seed(0)
    model = TwoInputs().eval()
    batches = [{"tokens": torch.randn(16, 32), "mask": torch.ones(16, 32)} for _ in range(2)]
    result = apply(
        model, WeightOnlyConfig(bits=4, block_size=32, rounding="gptq"), MethodData(calib_loader=batches)
    )
    layers = result.summary["gptq"]["layers"]
    assert set(layers) == {"a", "b"} and layers["a"]["rows"] == 32
    assert all(v["gptq_error"] <= v["rtn_error"] for v in layers.values())
