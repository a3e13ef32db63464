"""An FFN written as ``nn.Sequential(Linear, activation, Linear)`` beside an attention block (zoo round 4,
session 12: PatchTST's ``ff``) was not found ("ffn > 0 but the model has no FFN block"); it is now an FFN unit,
checked like the others against the masked original. A model's Sequential MLP head is not taken for one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.pruning.transformer_blocks import find_blocks


class Layer(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Dropout(0.0), nn.Linear(32, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.norm(x + self.ff(x))


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Layer(), Layer()])
        self.head = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 16))  # same widths, not an FFN

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_a_sequential_ffn_beside_attention_is_found_and_a_head_is_not():
    blocks = find_blocks(Model())
    assert [(u.name, u.up, u.down, u.width) for u in blocks.ffn] == [
        ("layers.0.ff", ["layers.0.ff.0"], "layers.0.ff.3", 32),
        ("layers.1.ff", ["layers.1.ff.0"], "layers.1.ff.3", 32),
    ]


def test_it_prunes_like_masking():
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(2, 5, 16)
    small = nc.prune_transformer(model, x, heads=0.5, ffn=0.5)  # checked against the masked original inside
    assert small.layers[0].ff[0].out_features == 16 and small.layers[0].ff[3].in_features == 16
    assert small.head[0].out_features == 24


def test_patchtst_prunes_heads_and_ffn():
    t = pytest.importorskip("transformers")
    t.logging.set_verbosity_error()
    cfg = t.PatchTSTConfig(num_input_channels=3, context_length=32, patch_length=8, patch_stride=8, d_model=16,
                           num_attention_heads=2, num_hidden_layers=2, ffn_dim=32, num_targets=4)  # fmt: skip
    model = t.PatchTSTForClassification(cfg).eval()
    small = nc.prune_transformer(model, {"past_values": torch.randn(2, 32, 3)}, heads=0.5, ffn=0.5)
    assert small.model.encoder.layers[0].ff[0].out_features == 16
