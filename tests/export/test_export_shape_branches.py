"""A graph traced through Python branches on the example's shapes fails in ONNX Runtime at other shapes.

The check runs the file on the example, a random batch and a shorter sequence; an ONNX Runtime failure
on one of them is an UnsupportedModelError naming the input set and saying which axes to fix (was a raw
onnxruntime ``Fail``: Funnel's pooling in the zoo sweep).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError

pytest.importorskip("onnxruntime")


class LastToken(nn.Module):
    """Picks the last position with an index computed in Python: the traced graph holds a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = int(x.shape[1]) - 1
        index = torch.full((x.shape[0], 1, x.shape[2]), last, dtype=torch.long)
        return torch.gather(x, 1, index).squeeze(1) * 2.0


def test_ort_failure_at_a_shorter_sequence_is_a_refusal_naming_the_axes(tmp_path):
    x = torch.randn(2, 6, 4)
    axes = {"x": {0: "batch", 1: "seq"}}
    with pytest.raises(UnsupportedModelError, match=r"fails on the shorter sequence: .*batch dim only"):
        nc.export_onnx(LastToken(), tmp_path / "m.onnx", x, input_names=["x"], dynamic_axes=axes, check=True)
    # the advice works: the batch dim alone is dynamic, and the file matches PyTorch
    s = nc.export_onnx(
        LastToken(), tmp_path / "m.onnx", x, input_names=["x"], dynamic_axes={"x": {0: "batch"}}, check=True
    )
    assert s["check"]["input_sets"] == ["example", "random batch of 8"]
    assert s["check"]["max_abs_diff"] < 1e-6
