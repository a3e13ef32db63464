"""Integer export of layers whose parent reads their weight/bias instead of calling them.

``nn.MultiheadAttention`` passes ``out_proj.weight`` / ``out_proj.bias`` to its functional forward (so do
WavLM's attention and Mamba's ``dt_proj``): the export stand-in had no ``bias`` (AttributeError, a zoo
CRASH), and such a layer runs in float in PyTorch and in the file, so the summary names it in
``kept_float`` instead of counting it as an integer layer.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc

pytest.importorskip("onnxruntime")


def _layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerDecoderLayer(16, 2, dim_feedforward=24, dropout=0.0, batch_first=True).eval()


@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_out_proj_read_by_its_parent_is_reported_float(tmp_path, mode):
    gen = torch.Generator().manual_seed(1)
    x = {"tgt": torch.randn(2, 5, 16, generator=gen), "memory": torch.randn(2, 6, 16, generator=gen)}
    q = nc.quantize(_layer(), mode=mode, **({"bits": 4} if mode == "weight_only" else {}))
    s = nc.export_onnx(q, tmp_path / "m.onnx", x, int8=True, check=True)
    info = s["dynamic_int8" if mode == "dynamic" else "matmul_nbits"]
    assert sorted(info["layers"]) == ["linear1", "linear2"]
    assert sorted(info["kept_float"]) == ["multihead_attn.out_proj", "self_attn.out_proj"]
    assert all("not called on the example" in r for r in info["kept_float"].values())
    integer = "DynamicQuantizeMatMul" if mode == "dynamic" else "MatMulNBits"
    assert s["op_counts"].get(integer) == 2  # the two FFN layers only
    assert s["check"]["max_rel_diff"] < 0.05
