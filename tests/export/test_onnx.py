"""ONNX export: fp32 parity, int8 QDQ folded into QLinearConv by ONNX Runtime, the OrtModel wrapper."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.export import OrtModel, export_onnx, op_counts
from netcompress.quantization import quantize


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class SubConv(nn.Conv2d):
    pass


class ThirdPartyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d(1)
        self.stem = SubConv(3, 8, 3)
        self.act = nn.ReLU6()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.stem(self.pad(x)))
        y = torch.add(y, F.relu(self.conv(y)))
        return self.head(y.mean(dim=(2, 3)))


def _trained_like(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def calib():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 16, 16, generator=gen), torch.zeros(8, dtype=torch.long)) for _ in range(4)]


def test_fp32_export_matches_pytorch(tmp_path):
    model = _trained_like(ConvNet())
    x = torch.randn(1, 3, 16, 16)
    summary = export_onnx(model, tmp_path / "f.onnx", x, int8=False, check=True)
    assert summary["check"]["max_abs_diff"] < 1e-4
    assert summary["check"]["top1_agreement"] == 1.0 and summary["check"]["num_samples"] == 9
    assert summary["op_counts"]["Conv"] == 3 and summary["int8_op_counts"] == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.onnx"]  # no temp files left behind
    assert OrtModel(tmp_path / "f.onnx")(torch.randn(5, 3, 16, 16)).shape == (5, 10)  # dynamic batch


def test_int8_export_fuses_qlinearconv_agrees_and_is_smaller(tmp_path, calib):
    model = _trained_like(ConvNet())
    qmodel = quantize(model, calib, bits=8)
    x = calib[0][0][:1]
    fp32 = export_onnx(model, tmp_path / "f.onnx", x, check=False)
    int8 = export_onnx(qmodel, tmp_path / "q.onnx", x, int8=True, check=True)
    counts = op_counts(tmp_path / "q.onnx")
    assert counts.get("QLinearConv") == 3 and "Conv" not in counts
    assert int8["int8_op_counts"]["QLinearConv"] == 3
    # the weights are int8 initializers now: no weight DequantizeLinear left besides the graph edges
    assert counts.get("DequantizeLinear", 0) <= 2
    # outputs agree with the PyTorch fake-quant model (measured here: max diff 0.0 to 4e-3, top-1 1.0)
    assert int8["check"]["top1_agreement"] >= 0.85
    assert int8["check"]["max_abs_diff"] < 0.05
    assert int8["size_bytes"] < 0.5 * fp32["size_bytes"], (int8["size_bytes"], fp32["size_bytes"])


def test_4bit_weights_export_exactly_through_int8_qdq(tmp_path, calib):
    model = _trained_like(ConvNet())
    qmodel = quantize(model, calib, bits=4, act_bits=8)
    summary = export_onnx(qmodel, tmp_path / "q4.onnx", calib[0][0][:1], int8=True)
    assert summary["int8_op_counts"].get("QLinearConv") == 3
    assert summary["check"]["max_abs_diff"] < 0.05 and summary["check"]["top1_agreement"] >= 0.85


def test_third_party_model_int8_export_runs(tmp_path):
    model = _trained_like(ThirdPartyNet())
    data = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    qmodel = quantize(model, data)
    summary = export_onnx(qmodel, tmp_path / "t.onnx", data[0][:1], int8=True)
    assert summary["check"]["max_abs_diff"] < 0.05
    # both convs fuse, the ReLU6 one too (absorbed by its uint8 quantizer); the residual add stays float
    assert summary["int8_op_counts"].get("QLinearConv") == 2 and "Conv" not in summary["op_counts"]


def test_ort_model_pickles_and_deepcopies(tmp_path):
    model = _trained_like(ConvNet())
    export_onnx(model, tmp_path / "f.onnx", torch.randn(1, 3, 16, 16), check=False)
    ort_model = OrtModel(tmp_path / "f.onnx")
    x = torch.randn(3, 3, 16, 16)
    y = ort_model(x)
    buf = io.BytesIO()
    torch.save(ort_model, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), y)
    assert torch.equal(copy.deepcopy(ort_model)(x), y)
    with torch.no_grad():
        assert float((y - model(x)).abs().max()) < 1e-4


def test_bad_exports_name_the_problem(tmp_path, calib):
    model = _trained_like(ConvNet())
    x = calib[0][0][:1]
    with pytest.raises(ConfigError, match="needs a fake-quantized model"):
        export_onnx(model, tmp_path / "a.onnx", x, int8=True)
    q16 = quantize(model, calib, bits=16, act_bits=16)
    with pytest.raises(UnsupportedModelError, match="16-bit"):
        export_onnx(q16, tmp_path / "b.onnx", x, int8=True)
    assert not any(tmp_path.iterdir())
