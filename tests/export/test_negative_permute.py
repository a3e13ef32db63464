"""``x.permute(0, -2, -1, 1)`` (transformers' Mamba-2 mixer): torch's exporter writes the negative dims into the
``Transpose`` perm and ONNX Runtime refuses to load the file ("Invalid attribute perm {0, -2, -1, 1}"), so every
export verb of Mamba-2 was refused. The perm is rewritten with non-negative dims after export."""

from __future__ import annotations

import onnx
import torch
from torch import nn

import netcompress as nc


class NegativePermute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)

    def forward(self, x):  # (batch, length, heads, dim)
        y = self.proj(x).permute(0, -2, -1, 1)  # (batch, heads, dim, length)
        return y.sum(-1)


def test_negative_permute_exports_and_runs(tmp_path):
    torch.manual_seed(0)
    model, x = NegativePermute().eval(), torch.randn(2, 5, 3, 6)
    summary = nc.export_onnx(model, tmp_path / "m.onnx", x, int8=False, check=True)
    assert summary["check"]["max_rel_diff"] < 1e-5
    perms = [list(a.ints) for n in onnx.load(tmp_path / "m.onnx").graph.node if n.op_type == "Transpose"
             for a in n.attribute if a.name == "perm"]  # fmt: skip
    assert perms == [[0, 2, 3, 1]]
