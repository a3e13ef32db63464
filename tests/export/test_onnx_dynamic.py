"""Dynamic int8 export: Linear layers run ONNX Runtime integer kernels with netcompress's own int8 codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.export import OrtModel, export_onnx
from netcompress.export.onnx_dynamic import int8_weight_codes
from netcompress.quantization import quantize
from netcompress.quantization.affine import quantize_tensor
from netcompress.quantization.modules import QuantLayer

INTEGER_OPS = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger"}
# ORT's DynamicQuantizeLinear and the PyTorch dynamic quantizer use the same uint8 asymmetric
# per-tensor scheme; they differ only by float reassociation and rare rounding ties
TOLERANCE = 1e-3


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10))


class Block(nn.Module):
    """A pre-norm transformer block: attention (Linear q/k/v/out) and a Linear feed-forward."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        att = F.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.norm2(x))


class OwnForwardLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * 1.0, self.bias)


def _export_pair(model: nn.Module, x: torch.Tensor, tmp_path):
    torch.manual_seed(0)
    q = quantize(model, mode="dynamic")
    fp = export_onnx(model, tmp_path / "float.onnx", x)
    summary = export_onnx(q, tmp_path / "int8.onnx", x, int8=True)
    return q, fp, summary


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_mlp_runs_integer_kernels_with_our_codes(tmp_path, granularity):
    torch.manual_seed(0)
    model = mlp().eval()
    x = torch.randn(4, 64)
    q = quantize(model, mode="dynamic", granularity=granularity)
    fp = export_onnx(model, tmp_path / "float.onnx", x)
    summary = export_onnx(q, tmp_path / "int8.onnx", x, int8=True)
    ops = summary["op_counts"]
    assert sum(ops.get(k, 0) for k in INTEGER_OPS) == 3, ops
    assert not {"Gemm", "MatMul", "QuantizeLinear", "DequantizeLinear"} & set(ops), ops
    assert summary["dynamic_int8"] == {"layers": ["0", "2", "4"], "kept_float": {}}
    assert summary["size_bytes"] < 0.35 * fp["size_bytes"]
    assert summary["check"]["max_rel_diff"] < TOLERANCE
    # the int8 initializers are the PyTorch model's own codes (transposed: B of MatMulInteger)
    exported = sorted(
        (c for c in int8_weight_codes(str(tmp_path / "int8.onnx")).values() if c.ndim == 2),
        key=lambda c: c.shape,
    )
    layers = [m for m in q.modules() if isinstance(m, QuantLayer)]
    expected = sorted(
        (
            quantize_tensor(
                m.layer.weight, m.weight_fq.scale, m.weight_fq.zero_point, m.weight_fq.spec
            ).T.numpy()
            for m in layers
        ),
        key=lambda c: c.shape,
    )
    assert len(exported) == 3
    for got, want in zip(exported, expected):
        np.testing.assert_array_equal(got, want.astype(np.int8))
    # a fresh batch of another size, well away from the example's range
    x2 = torch.randn(32, 64) * 3
    with torch.no_grad():
        ref = q(x2)
    got = OrtModel(tmp_path / "int8.onnx")(x2)
    assert float((ref - got).abs().max() / ref.abs().max()) < TOLERANCE


def test_transformer_block_runs_integer_kernels(tmp_path):
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 16, 64)
    q, fp, summary = _export_pair(model, x, tmp_path)
    ops = summary["op_counts"]
    assert sum(ops.get(k, 0) for k in INTEGER_OPS) == 4, ops
    assert "Gemm" not in ops and "QuantizeLinear" not in ops
    assert summary["size_bytes"] < 0.35 * fp["size_bytes"]
    assert summary["check"]["max_rel_diff"] < TOLERANCE


def test_linear_with_own_forward_stays_qdq_and_is_named(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), OwnForwardLinear(32, 4)).eval()
    x = torch.randn(4, 16)
    q = quantize(model, mode="dynamic")
    summary = export_onnx(q, tmp_path / "int8.onnx", x, int8=True)
    info = summary["dynamic_int8"]
    assert info["layers"] == ["0"]
    assert "own forward" in info["kept_float"]["2"]
    assert sum(summary["op_counts"].get(k, 0) for k in INTEGER_OPS) == 1
