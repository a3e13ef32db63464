"""Structured transformer pruning: heads, FFN neurons and hidden width on every supported family.

Each pruned model is compared with a masked copy of the original (``transformer_cases.masked_original``: the
removed heads' output-projection columns and the removed neurons' down columns zeroed) and parameter counts are
computed by hand. Importances: ``test_transformer_pruning_importance.py``; refusals:
``test_transformer_pruning_refusals.py``.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.pruning import PrunedMultiheadAttention, TransformerPruneConfig, prune_transformer
from netcompress.pruning.transformer_pruning import transformer_prune
from netcompress.pruning.transformer_verify import KeptChannelNorm
from tests.pruning.transformer_cases import (
    FAMILIES,
    IDS,
    H,
    HandModel,
    MHAModel,
    family_model,
    masked_original,
    model_output,
)
from tests.tiny_hf import hf_family as _hf


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_and_ffn_pruning_equals_the_masked_model(family):
    model, inputs = family_model(family)
    before = copy.deepcopy(model.state_dict())
    small, summary = transformer_prune(model, inputs, TransformerPruneConfig(heads=0.5, ffn=0.5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the argument is untouched
    assert [(r["before"], r["after"]) for r in summary["heads"]] == [(4, 2)] * len(summary["heads"])
    assert all(r["after"] == r["before"] - r["before"] // 2 for r in summary["ffn"])
    expected, got = model_output(masked_original(model, summary), inputs), model_output(small, inputs)
    assert got.shape == expected.shape == model_output(model, inputs).shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    original = model_output(model, inputs)
    assert (got - original).abs().max() > 1e-3 * original.abs().max()  # something was really removed
    assert summary["params_after"] == sum(p.numel() for p in small.parameters()) < summary["params_before"]
    assert summary["macs_after"] < summary["macs_before"]
    pickle.loads(pickle.dumps(small))


def test_bert_parameter_count_is_exact():
    model, inputs = _hf("bert")
    small, summary = transformer_prune(model, inputs, TransformerPruneConfig(heads=0.5, ffn=0.5))
    d, layers = 8, 2
    heads_removed = 2 * d * (3 * (H + 1) + H)  # q/k/v rows with bias, output-projection columns
    ffn_removed = 18 * ((H + 1) + H)  # 37 -> 19 neurons: intermediate rows with bias, output columns
    assert summary["params_before"] - summary["params_after"] == layers * (heads_removed + ffn_removed)
    attn = small.bert.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.all_head_size, attn.query.out_features) == (2, 16, 16)
    assert small.bert.encoder.layer[0].intermediate.dense.out_features == 19


def test_mha_heads_become_a_pruned_multihead_attention_that_pickles():
    model = MHAModel().eval()
    small = prune_transformer(model, IDS, heads=0.25, ffn=0.0)
    attn = small.encoder.layers[0].self_attn
    assert isinstance(attn, PrunedMultiheadAttention)
    assert (attn.num_heads, attn.head_dim, attn.embed_dim, attn.out_proj.in_features) == (3, 8, H, 24)
    assert sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in small.parameters()
    ) == 2 * 8 * (3 * (H + 1) + H)
    loaded = pickle.loads(pickle.dumps(small))
    torch.testing.assert_close(model_output(loaded, IDS), model_output(small, IDS))


@pytest.mark.parametrize("gqa", ["groups", "queries"])
def test_llama_grouped_query_attention_keeps_groups_consistent(gqa):
    model, inputs = _hf("llama")
    small, summary = transformer_prune(model, inputs, TransformerPruneConfig(heads=0.5, ffn=0.0, gqa=gqa))
    for row, layer in zip(summary["heads"], small.model.layers, strict=True):
        attn = layer.self_attn
        q_heads, kv_heads = attn.q_proj.out_features // 8, attn.k_proj.out_features // 8
        assert q_heads == kv_heads * attn.num_key_value_groups == 2
        if gqa == "groups":  # one whole group: query heads 2g and 2g+1 with key/value head g
            assert kv_heads == 1 and row["kept"] in ([0, 1], [2, 3])
        else:  # one query head from each of the two groups
            assert kv_heads == 2 and row["kept"][0] in (0, 1) and row["kept"][1] in (2, 3)
    torch.testing.assert_close(
        model_output(small, inputs),
        model_output(masked_original(model, summary), inputs),
        atol=1e-5,
        rtol=1e-5,
    )
    # 2 layers x (2 query heads x 8 x 32 q rows + 2 x 8 x 32 o columns) + key/value heads removed
    kv_removed = {"groups": 1, "queries": 0}[gqa] * 2 * 8 * H
    assert summary["params_before"] - summary["params_after"] == 2 * (2 * 8 * H * 2 + kv_removed)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_pruned_hf_model_runs_with_an_attention_mask(family):
    model, inputs = _hf(family)
    small = prune_transformer(model, inputs, heads=0.5, ffn=0.5, hidden=0.25)
    with torch.no_grad():
        out = small(**inputs)
        shorter = small(input_ids=inputs["input_ids"][:, :5], attention_mask=inputs["attention_mask"][:, :5])
    assert out.logits.shape == model_output(model, inputs).shape
    assert shorter.logits.shape[:2] == (2, 3) if family == "bert" else shorter.logits.shape[:2] == (2, 5)
    assert small.config.hidden_size == 24 and model.config.hidden_size == H


@pytest.mark.parametrize("family", ["hand", "mha", "bert", "vit", "gpt2", "llama"])
def test_hidden_width_is_one_channel_set_everywhere(family):
    model, inputs = family_model(family)
    small, summary = transformer_prune(model, inputs, TransformerPruneConfig(heads=0.0, ffn=0.0, hidden=0.25))
    assert (summary["hidden_before"], summary["hidden_after"]) == (H, 24)
    widths = {m.normalized_shape[0] for m in small.modules() if isinstance(m, nn.LayerNorm)}
    widths |= {
        m.embedding_dim for m in small.modules() if isinstance(m, nn.Embedding) and m.num_embeddings != 16
    }
    assert widths == {24} or family == "llama"
    assert model_output(small, inputs).shape == model_output(model, inputs).shape


def test_hidden_pruning_of_dead_channels_is_lossless_without_norms():
    """Nothing normalises the stream: channels no layer writes can go without changing the output."""
    model = HandModel(norm=False).eval()
    dead = [3, 10, 20, 31, 5, 7, 11, 13]
    with torch.no_grad():
        model.emb.weight[:, dead] = 0
        for layer in (model.attn.out, model.mlp.fc2):
            layer.weight[dead] = 0
            layer.bias[dead] = 0
    small, summary = transformer_prune(model, IDS, TransformerPruneConfig(heads=0.0, ffn=0.0, hidden=0.25))
    assert summary["hidden_after"] == 24
    assert small.emb.embedding_dim == 24 and small.head.in_features == 24 and small.attn.q.in_features == 24
    torch.testing.assert_close(model_output(small, IDS), model_output(model, IDS), atol=1e-6, rtol=1e-6)


def test_kept_channel_norm_normalises_over_the_kept_channels_only():
    norm = nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    keep = [0, 2, 3, 5]
    x = torch.randn(2, 3, 6)
    out = KeptChannelNorm(norm, keep)(x)
    expected = torch.nn.functional.layer_norm(
        x[..., keep], (4,), norm.weight[keep], norm.bias[keep], norm.eps
    )
    torch.testing.assert_close(out[..., keep], expected)
    assert torch.equal(out[..., [1, 4]], torch.zeros(2, 3, 2))


class DecoderModel(nn.Module):
    """nn.TransformerDecoderLayer: causal self-attention, cross-attention on a memory, FFN."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, H)
        self.dec = nn.TransformerDecoderLayer(H, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(H, 5)

    def forward(self, ids: torch.Tensor, memory_ids: torch.Tensor) -> torch.Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        return self.head(self.dec(self.emb(ids), self.emb(memory_ids), tgt_mask=causal, tgt_is_causal=True))


def test_decoder_cross_attention_and_ignore_patterns():
    import netcompress as nc

    model = DecoderModel().eval()
    inputs = (IDS[:, :6], IDS[:, 2:])  # two positional inputs
    small, summary = transformer_prune(model, inputs, TransformerPruneConfig(heads=0.5, ffn=0.5, hidden=0.25))
    assert [(r["name"], r["after"]) for r in summary["heads"]] == [
        ("dec.self_attn", 2),
        ("dec.multihead_attn", 2),
    ]
    assert (summary["ffn"][0]["after"], summary["hidden_after"]) == (32, 24)
    kept = nc.prune_transformer(model, inputs, heads=0.5, ffn=0.0, ignore=["dec.multihead_attn"])
    assert kept.dec.self_attn.num_heads == 2 and isinstance(kept.dec.multihead_attn, nn.MultiheadAttention)
    with pytest.raises(ConfigError, match="ignore pattern 'dec.nothing' matches no attention or FFN block"):
        prune_transformer(model, inputs, ignore=["dec.nothing"])
