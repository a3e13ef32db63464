"""Tracing models that branch on input shapes (HF-style input checks, TF "same" padding from the size)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import ExportMismatchError, UnsupportedModelError
from netcompress.core.methods import MethodData, apply
from netcompress.export import check_onnx, export_onnx
from netcompress.quantization.ptq import PTQStaticConfig
from netcompress.quantization.tracing import trace_for_quantization


class ShapeChecked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_channels = 3
        self.conv, self.bn = nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[1] != self.num_channels:
            raise ValueError("channel mismatch")
        pad = max(int(x.shape[-1]) % 2, 1)  # padding computed from the input size
        y = F.relu(self.bn(self.conv(F.pad(x, [pad, pad, pad, pad]))))
        return self.fc(y.flatten(2).mean(-1))


def test_shape_branches_trace_with_an_example_and_batch_size_stays_free():
    model = ShapeChecked().eval()
    with pytest.raises(UnsupportedModelError, match="cannot trace"):
        trace_for_quantization(model)
    gm = trace_for_quantization(model, example_inputs=torch.randn(2, 3, 16, 16))
    x = torch.randn(5, 3, 16, 16)
    assert torch.equal(gm(x), model(x))
    assert not [n for n in gm.graph.nodes if n.op == "call_function" and n.target.__name__ == "ne"]


def test_ptq_traces_with_the_first_calibration_batch_folds_bn_and_export_check_fails_on_mismatch(tmp_path):
    torch.manual_seed(0)
    model = ShapeChecked().eval()
    calib = [(torch.randn(8, 3, 16, 16), torch.zeros(8)) for _ in range(3)]
    result = apply(model, PTQStaticConfig(bits=8), MethodData(calib_loader=calib))
    assert result.summary["graph"] == "fx" and result.summary["fold_bn"]["folded"] == [["conv", "bn"]]
    x = torch.randn(1, 3, 16, 16)
    summary = export_onnx(result.model, tmp_path / "m.onnx", x, int8=True, check=True)
    assert summary["int8_op_counts"].get("QLinearConv") == 1
    assert summary["check"]["max_rel_diff"] <= summary["check"]["tolerance"] == 0.05
    other = apply(ShapeChecked().eval(), PTQStaticConfig(bits=8), MethodData(calib_loader=calib)).model
    with pytest.raises(
        ExportMismatchError,
        match=r"tolerance 5.0%.*first diverging node: .*worst output at sample \d+, index \d+",
    ):
        check_onnx(other, tmp_path / "m.onnx", x, tolerance=0.05)
