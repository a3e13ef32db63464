"""benchmarks/ort_peers.py: ONNX Runtime's static quantizer as the benchmarks call it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime.quantization")


def test_ort_quantize_static_writes_a_qdq_file_with_and_without_pre_process(tmp_path):
    from ort_peers import ort_quantize_static

    from netcompress.export import export_onnx
    from netcompress.export.onnx import OrtModel, op_counts

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    export_onnx(model, tmp_path / "float.onnx", x)
    feeds = [{"input": torch.randn(2, 3, 8, 8).numpy()} for _ in range(3)]
    for pre in (False, True):
        out = tmp_path / f"q{int(pre)}.onnx"
        info = ort_quantize_static(tmp_path / "float.onnx", out, feeds, pre_process=pre)
        assert info == {"source": "q1_pre.onnx" if pre else "float.onnx"}
        ops = op_counts(out)
        assert ops["QuantizeLinear"] >= 2 and ops["DequantizeLinear"] >= 4  # QDQ: weights + activations
        with torch.no_grad():
            want = model(x)
        assert float((OrtModel(out)(x) - want).abs().max()) < 0.1 * float(want.abs().max())
