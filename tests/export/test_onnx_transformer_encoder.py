"""nn.TransformerEncoderLayer exports to ONNX: tracing keeps it off its fused inference kernel."""

from __future__ import annotations

import torch

import netcompress as nc
from netcompress.export import export_onnx


def test_vit_tiny_with_encoder_layers_exports_and_matches(tmp_path):
    torch.manual_seed(0)
    model = nc.models.create("vit_tiny", dim=32, depth=2, heads=4, mlp_dim=48).eval()
    x = torch.randn(2, 3, 32, 32)
    summary = export_onnx(model, tmp_path / "vit.onnx", x, check=True)
    assert summary["check"]["max_abs_diff"] < 1e-4
    assert torch.backends.mha.get_fastpath_enabled()  # the switch is put back
    ort = nc.export.OrtModel(tmp_path / "vit.onnx")
    torch.testing.assert_close(ort(x), model(x), atol=1e-4, rtol=1e-4)
