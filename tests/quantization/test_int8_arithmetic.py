"""The fake-quant model computes what ONNX Runtime's int8 file computes (issue 13, EfficientNet-Lite0 at full protocol).

The failing situation, at test scale: an EfficientNet-Lite-like block (stem conv + BN + ReLU6, a
depthwise conv whose BN has small running variances, so its folded weights are large and turn one
flipped input code into many, a 1x1 projection, a residual add, global average pooling over 2x2,
a linear head). Before the fix the ORT file and the fake-quant model disagreed by a few codes
(float biases vs ORT's int32 ones, float32 rounding vs ORT's requantization, ties in the pooling)
and the depthwise conv amplified them; now the two are bit-identical.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.methods import MethodData, apply
from netcompress.export.divergence import first_divergence
from netcompress.export.onnx import check_onnx, export_onnx
from netcompress.quantization import PTQStaticConfig, wrap_module
from netcompress.quantization.int_arithmetic import INT32_BIAS_LIMIT, match_int8_kernels_, snap_biases_
from netcompress.quantization.int_graph_ops import Int8Add, Int8GlobalAvgPool
from netcompress.quantization.qparams import QuantSpec

pytest.importorskip("onnxruntime")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Conv2d(16, 24, 3, stride=4, padding=1), nn.ReLU6())
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.dw(x))
        x = nn.functional.adaptive_avg_pool2d(self.head(x), 1).flatten(1)
        return self.fc(x)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = Block().eval()
    with torch.no_grad():
        for bn in (model.stem[1], model.dw[1], model.project[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.bias.uniform_(-0.3, 0.6)
        model.dw[1].running_var.uniform_(0.002, 0.02)  # folded depthwise weights ~10x: a gain of ~20 codes
    return model


def _quantized() -> tuple[nn.Module, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    calib = [(torch.randn(16, 3, 16, 16, generator=gen), torch.zeros(16)) for _ in range(2)]
    cfg = PTQStaticConfig(
        granularity="per_channel", scheme="symmetric", bias_correction=True, num_calib_batches=2
    )
    return apply(_model(), cfg, MethodData(calib_loader=calib)).model, torch.randn(
        64, 3, 16, 16, generator=gen
    )


def test_ort_file_equals_fake_quant_model(tmp_path) -> None:
    qmodel, images = _quantized()
    path = tmp_path / "q.onnx"
    exported = export_onnx(qmodel, path, images[:1], int8=True, check=True, check_batch_size=16)
    info = exported["int8_arithmetic"]  # export's copy computes as the int8 kernels; qmodel is untouched
    # 4 convs + the linear head; the residual add; the global average pooling
    assert (info["snapped"], info["integer_requant"], info["integer_adds"], info["integer_pools"]) == (
        5,
        5,
        1,
        1,
    )
    assert info["max_shift"] <= 0.5 and info["rescaled"] == {}
    assert not any(isinstance(m, (Int8Add, Int8GlobalAvgPool)) for m in qmodel.modules())
    counts = exported["int8_op_counts"]
    assert (counts["QLinearConv"], counts["QLinearAdd"], counts["QLinearGlobalAveragePool"]) == (4, 1, 1)
    assert exported["check"]["max_abs_diff"] == 0.0  # bit-identical, on the example and a random batch
    match_int8_kernels_(qmodel)
    found = first_divergence(qmodel, path, images, tolerance=1e-6)
    assert found is not None and not found["exceeds"] and found["rel_diff"] == 0.0, found
    assert check_onnx(qmodel, path, images, batch_size=0)["max_abs_diff"] == 0.0


def test_without_int8_arithmetic_the_file_diverges(tmp_path, monkeypatch) -> None:
    """The float32 fake-quant arithmetic (the behaviour before the fix): codes away, amplified by the depthwise conv."""
    monkeypatch.setattr("netcompress.quantization.int_arithmetic.match_int8_kernels_", lambda model: {})
    qmodel, images = _quantized()
    path = tmp_path / "q.onnx"
    exported = export_onnx(
        qmodel, path, images[:1], int8=True, check=True, tolerance=0.5, check_batch_size=16
    )
    assert exported["int8_arithmetic"] == {} and exported["check"]["max_rel_diff"] > 0.003
    found = first_divergence(qmodel, path, images, tolerance=1e-6)
    assert found["exceeds"] and found["op_type"] == "QLinearConv", found  # a code flipped at the first conv
    amplified = first_divergence(qmodel, path, images, tolerance=0.01)
    assert amplified["exceeds"] and amplified["module"] == "act_quant.dw_0_out", (
        amplified
    )  # 3 codes: the gain
    assert check_onnx(qmodel, path, images, batch_size=0)["max_rel_diff"] > 0.003


def test_match_is_idempotent_and_survives_deepcopy() -> None:
    import copy

    qmodel, images = _quantized()
    match_int8_kernels_(qmodel)
    with torch.no_grad():
        before = qmodel(images)
    again = match_int8_kernels_(qmodel)
    assert (again["integer_requant"], again["integer_adds"], again["integer_pools"]) == (5, 1, 1)
    assert sum(isinstance(m, (Int8Add, Int8GlobalAvgPool)) for m in qmodel.modules()) == 2
    twin = copy.deepcopy(qmodel)
    with torch.no_grad():
        assert torch.equal(qmodel(images), before) and torch.equal(twin(images), before)
    # the copy's ops read the copy's quantizers, not the original's
    add = next(m for m in twin.modules() if isinstance(m, Int8Add))
    assert all(any(q is m for m in twin.modules()) for q in add.__dict__["quantizers"])


def test_bias_beyond_int32_raises_the_channel_weight_scale() -> None:
    conv = nn.Conv2d(2, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1e-4, 5e-5, 0.5, -0.25]).reshape(2, 2, 1, 1))
        conv.bias.copy_(torch.tensor([10.0, 0.1]))
    spec = QuantSpec(bits=8, granularity="per_channel", scheme="symmetric")
    q = wrap_module(conv, weight_spec=spec, input_spec=QuantSpec(bits=8, signed=False, scheme="asymmetric"))
    q.input_fq.observe(torch.rand(4, 2, 3, 3))
    q.input_fq.freeze()
    q.weight_fq.freeze()
    s_x = float(q.input_fq.scale)
    assert 10.0 / (s_x * float(q.weight_fq.scale[0])) > 2**31  # ORT's cast would overflow
    info = snap_biases_(q)
    assert info["rescaled"] == {"": 1} and info["snapped"] == 1
    unit = s_x * q.weight_fq.scale
    codes = q.layer.bias.detach() / unit
    assert float(codes.abs().max()) <= INT32_BIAS_LIMIT
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # on the int32 grid
    assert float(q.weight_fq.scale[1]) == pytest.approx(0.5 / 127)  # the healthy channel keeps its grid
