"""A state tensor that a later segment reads only for its dtype (vit-pytorch's SimpleViT: the sin-cos position table
``.to(dtype=patches.dtype)``) is no input of that segment's ONNX graph: the exporter drops it, and running the
exported folder failed with ONNX Runtime's raw "Invalid input name: in1". Only the inputs a graph declares are fed."""

from __future__ import annotations

import torch
from torch import nn

from netcompress.dynamic import OrtEarlyExit, add_early_exits, export_early_exit_onnx


class DtypeReader(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)
        self.register_buffer("bias_table", torch.linspace(-1, 1, 4), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        y = self.block(h)
        return self.head(y.mean((2, 3))) + self.bias_table.to(dtype=h.dtype)  # h: read for its dtype only


def test_a_state_read_only_for_its_dtype_is_not_fed(tmp_path):
    torch.manual_seed(0)
    model, x = DtypeReader().eval(), torch.randn(3, 3, 8, 8)
    ee = add_early_exits(model, exits=["block"], example_inputs=x[:1]).eval()
    summary = export_early_exit_onnx(ee, tmp_path / "ee", x, check=True)
    assert len(summary["check"]) == 2
    with torch.no_grad():
        want = ee.forward_all(x)
    got = OrtEarlyExit(tmp_path / "ee").forward_all(x)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
