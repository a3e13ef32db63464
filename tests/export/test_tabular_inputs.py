"""Tabular models as rtdl's FT-Transformer writes them: float features plus an int64 (batch, columns) tensor of
category indices (one embedding per column), and ``batch_size = len(q)`` inside attention.

Before: int8 quantization froze the calibration batch into every reshape (``len`` of a proxy answered an int:
the quantized model failed on any other batch size), export froze it too (``Tensor.__len__`` is a constant to
the tracer), the export check drew category indices past a column's cardinality, and the column axis was
exported as a sequence axis the model cannot take."""

from __future__ import annotations

import torch
from torch import nn

import netcompress as nc

CARDS = (3, 7, 4)


class TabularAttention(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.num = nn.Linear(1, dim)
        self.cats = nn.ModuleList(nn.Embedding(c, dim) for c in CARDS)
        self.qkv, self.out, self.head = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 5)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.num(x_num[..., None])] + [e(x_cat[:, i])[:, None] for i, e in enumerate(self.cats)], 1)
        q, k, v = self.qkv(tokens).chunk(3, -1)
        batch_size = len(q)  # as rtdl's MultiheadAttention
        n, d = q.shape[1], q.shape[2] // self.heads
        q, k, v = (t.reshape(batch_size, n, self.heads, d).transpose(1, 2) for t in (q, k, v))
        y = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        return self.head(self.out(y.transpose(1, 2).reshape(batch_size, n, -1)).mean(1))


def _inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cats = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], 1)
    return torch.randn(n, 5, generator=g), cats


def test_float_export_keeps_the_batch_dynamic_and_the_columns_fixed(tmp_path):
    torch.manual_seed(0)
    model, x = TabularAttention().eval(), _inputs(2, 0)
    s = nc.export_onnx(model, tmp_path / "t.onnx", x, check=True)
    assert s["dynamic_axes"] == {"input_0": {"0": "batch"}, "input_1": {"0": "batch"}, "output": {"0": "batch"}}
    assert s["check"]["input_sets"] == ["example", "random batch of 8"] and s["check"]["max_rel_diff"] < 1e-5


def test_int8_model_takes_other_batch_sizes_and_exports(tmp_path):
    torch.manual_seed(0)
    model = TabularAttention().eval()
    calib = [(_inputs(4, s), torch.zeros(4, dtype=torch.long)) for s in (1, 2)]
    q = nc.quantize(model, calib, bits=8)
    x = _inputs(3, 5)  # neither the calibration's 4 nor the export example's 2
    assert q(*x).shape == (3, 5)
    err = (q(*x) - model(*x)).abs().max() / model(*x).abs().max()
    assert err < 0.1
    s = nc.export_onnx(q, tmp_path / "q.onnx", _inputs(2, 0), int8=True, check=True)
    assert s["check"]["input_sets"] == ["example", "random batch of 8"] and s["check"]["max_rel_diff"] < 0.05

