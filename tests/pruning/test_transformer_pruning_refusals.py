"""Transformer pruning refuses, by name, what it cannot do correctly: ratios removing every head, attention it
cannot read, hand-written blocks whose pruned form differs from the masked original, hidden pruning of a model
whose input is the stream, heads requested on a model without attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.pruning import TransformerPruneConfig, prune_transformer
from netcompress.pruning.transformer_blocks import find_blocks
from netcompress.pruning.transformer_pruning import transformer_prune
from tests.pruning.transformer_cases import IDS, MLP, H, HandModel


def test_ratios_that_would_remove_every_head_are_refused():
    with pytest.raises(ConfigError, match="heads=1.0 would remove everything"):
        TransformerPruneConfig(heads=1.0)
    with pytest.raises(ConfigError, match="min_heads"):
        prune_transformer(HandModel(), IDS, min_heads=0)
    small, summary = transformer_prune(
        HandModel().eval(), IDS, TransformerPruneConfig(heads=0.99, ffn=0.0, min_heads=1)
    )
    assert summary["heads"][0]["after"] == 1 and small.attn.num_heads == 1


def test_unknown_attention_structure_is_reported_by_name():
    class PackedAttention(nn.Module):
        def __init__(self):
            super().__init__()
            # named qkv/proj it would be a "packed" layout
            self.num_heads, self.fused, self.proj = 4, nn.Linear(H, 3 * H), nn.Linear(H, H)

        def forward(self, x):
            return self.proj(self.fused(x)[..., :H])

    model = nn.Sequential(nn.Embedding(50, H))
    model.add_module("blk", PackedAttention())
    assert "blk" in find_blocks(model).unknown
    with pytest.raises(
        UnsupportedModelError, match=r"'blk' \(PackedAttention: fused q\|k\|v layer 'fused' .*getitem"
    ):
        prune_transformer(model, IDS, heads=0.5, ffn=0.0)


@pytest.mark.parametrize(
    ("kind", "message"), [("interleaved", "differs from the masked original"), ("fixed_width", "fails there")]
)
def test_a_hand_written_block_the_pruner_cannot_follow_is_an_error_naming_it(kind, message):
    model = HandModel(**{kind: True}).eval()
    with pytest.raises(UnsupportedModelError, match=rf"'attn' \(HandAttention\).*{message}"):
        prune_transformer(model, IDS, heads=0.5, ffn=0.0)
    prune_transformer(model, IDS, heads=0.0, ffn=0.5)  # its FFN alone is fine


def test_hidden_pruning_of_a_model_whose_input_is_the_stream_is_refused():
    layer = nn.TransformerEncoderLayer(H, 4, 64, dropout=0.0, batch_first=True).eval()
    with pytest.raises(UnsupportedModelError, match="residual stream.*model's input"):
        prune_transformer(layer, torch.randn(2, 5, H), heads=0.0, ffn=0.0, hidden=0.25)
    assert prune_transformer(layer, torch.randn(2, 5, H), heads=0.5).self_attn.num_heads == 2


def test_no_attention_block_with_heads_requested_is_an_error():
    with pytest.raises(UnsupportedModelError, match="no attention block"):
        prune_transformer(nn.Sequential(MLP()), torch.randn(2, H), heads=0.5)
