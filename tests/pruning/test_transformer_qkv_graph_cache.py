"""The fused-q|k|v split read from a traced forward is kept per module structure (``transformer_qkv_graph``): copies of
one structure (the head-dim search's candidates) are traced once; a changed structure (fewer heads after pruning, other
widths) is traced again and read anew."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc
import netcompress.pruning.transformer_qkv_graph as qkv_graph
from netcompress.pruning.transformer_blocks import find_blocks


class Attention(nn.Module):
    def __init__(self, heads: int = 4, head_dim: int = 8, dim: int = 16) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, head_dim
        self.qkv, self.proj = nn.Linear(dim, 3 * heads * head_dim), nn.Linear(heads * head_dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1))


class Net(nn.Module):
    def __init__(self, heads: int = 4, head_dim: int = 8) -> None:
        super().__init__()
        self.attn = nn.ModuleList(Attention(heads, head_dim) for _ in range(2))

    def forward(self, x):
        for attn in self.attn:
            x = x + attn(x)
        return x


def test_copies_are_traced_once_and_a_changed_structure_again(monkeypatch) -> None:
    qkv_graph._LAYOUTS.clear()
    traced = []
    real = qkv_graph.trace_tokens
    monkeypatch.setattr(qkv_graph, "trace_tokens", lambda m, d: traced.append(m) or real(m, d))
    torch.manual_seed(0)
    model = Net()
    first = [(u.layout, u.num_heads, u.head_dim) for u in find_blocks(model).attention]
    assert first == [("packed", 4, 8)] * 2 and len(traced) == 1  # the two layers share one structure
    for _ in range(3):
        assert [(u.layout, u.num_heads) for u in find_blocks(copy.deepcopy(model)).attention] == [("packed", 4)] * 2
    assert len(traced) == 1
    small = nc.prune_transformer(model, torch.randn(2, 5, 16), heads=0.5, ffn=0.0)
    assert [(u.num_heads, u.head_dim) for u in find_blocks(small).attention] == [(2, 8)] * 2  # read anew
    assert len(traced) == 2
    assert [u.num_heads for u in find_blocks(Net(heads=2, head_dim=4)).attention] == [2, 2] and len(traced) == 3
