"""Head-dim pruning (transformer_head_dim): equals the masked original, masks, encoder layers, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.pruning import HeadDimAttention, PrunedMultiheadAttention, head_dim_scores
from netcompress.pruning.transformer_head_dim import apply_head_dims_, masked_reference

E, H, D = 16, 4, 4  # 4 heads of 4 channels


def _mha(batch_first: bool = True, **kw) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first, **kw)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    return mha.eval()


class Holder(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def _prune(mha: nn.Module, qk: float, v: float, x: torch.Tensor, data: bool = True):
    model = Holder(mha)
    scores = head_dim_scores(model, [(x, None)] if data else None)
    small = copy.deepcopy(model)
    kept = apply_head_dims_(small, scores, qk, v)
    masked = masked_reference(copy.deepcopy(model), kept)
    return small.attn, masked.attn, kept


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("data", [True, False])
def test_equals_the_masked_original_with_every_mask(batch_first, data):
    torch.manual_seed(1)
    b, L = 3, 5
    x = torch.randn(b, L, E) if batch_first else torch.randn(L, b, E)
    mha = _mha(batch_first)
    small, masked, kept = _prune(mha, 0.5, 0.25, x, data)
    assert isinstance(small, HeadDimAttention) and (small.qk_dim, small.v_dim) == (2, 3)
    assert all(len(q) == 2 for q in kept["attn"][0]) and all(len(v) == 3 for v in kept["attn"][1])
    pad = torch.zeros(b, L, dtype=torch.bool)
    pad[0, -2:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    per_head = torch.randn(b * H, L, L)
    cases = [
        {},
        {"key_padding_mask": pad},
        {"attn_mask": causal},
        {"attn_mask": causal, "is_causal": True},
        {"attn_mask": causal.isinf(), "key_padding_mask": pad},
        {"attn_mask": per_head},
    ]
    for kw in cases:
        for need in (False, True):
            got, w = small(x, x, x, need_weights=need, **kw)
            want, w_want = masked(x, x, x, need_weights=need, **kw)
            assert torch.allclose(got, want, atol=1e-5), kw
            if need:
                assert torch.allclose(w, w_want, atol=1e-5), kw
    got = small(x, x, x, need_weights=False)[0]
    assert not torch.allclose(got, mha(x, x, x, need_weights=False)[0], atol=1e-3)  # channels really went
    one = x[0] if batch_first else x[:, 0]  # unbatched input
    assert torch.allclose(small(one, one, one)[0], masked(one, one, one)[0], atol=1e-5)
    mem = torch.randn(b, 7, E) if batch_first else torch.randn(7, b, E)  # cross-attention, another length
    assert torch.allclose(small(x, mem, mem)[0], masked(x, mem, mem)[0], atol=1e-5)


def test_exact_parameter_counts_and_nothing_removed_is_the_original():
    x = torch.randn(2, 5, E)
    mha = _mha()
    small, _, _ = _prune(mha, 0.5, 0.25, x)
    # q and k: 4 heads x 2 channels, v: 4 heads x 3 channels, rows of E weights + 1 bias; out_proj 12 -> 16
    assert sum(p.numel() for p in small.parameters()) == (8 + 8 + 12) * (E + 1) + 12 * E + E
    same, _, _ = _prune(mha, 0.0, 0.0, x)
    assert torch.allclose(same(x, x, x)[0], mha(x, x, x)[0], atol=1e-5)


def test_dropout_in_train_mode_and_head_pruned_sources():
    x = torch.randn(2, 5, E)
    mha = _mha(dropout=0.5)
    small, masked, _ = _prune(mha, 0.5, 0.5, x)
    assert small.dropout == 0.5
    small.train()
    torch.manual_seed(0)
    a = small(x, x, x)[0]
    assert not torch.allclose(a, small.eval()(x, x, x)[0])  # dropout acts in train mode only
    assert torch.allclose(small(x, x, x)[0], masked(x, x, x)[0], atol=1e-5)
    # a head-pruned attention (3 of 4 heads) with a per-head mask over the 4 source heads
    three = PrunedMultiheadAttention.from_attention(_mha(), [0, 2, 3])
    small3, masked3, _ = _prune(three, 0.5, 0.5, x)
    mask = torch.randn(2 * H, 5, 5)
    assert small3.head_index == [0, 2, 3] and small3.source_heads == H
    assert torch.allclose(small3(x, x, x, attn_mask=mask)[0], masked3(x, x, x, attn_mask=mask)[0], atol=1e-5)


def _encoder(batch_first: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_in_eval_mode_equals_masked(batch_first):
    enc = _encoder(batch_first)
    x = torch.randn(3, 6, E) if batch_first else torch.randn(6, 3, E)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, -3:] = True
    scores = head_dim_scores(enc, [x])
    assert set(scores) == {"layers.0.self_attn", "layers.1.self_attn"}
    small = copy.deepcopy(enc)
    kept = apply_head_dims_(small, scores, 0.5, 0.5)
    masked = masked_reference(copy.deepcopy(enc), kept)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad():  # eval + no_grad: the fused fast path for the masked original, not for ours
        for kw in ({}, {"src_key_padding_mask": pad}, {"mask": causal}):
            got, want = small(x, **kw), masked(x, **kw)
            if not batch_first:
                got, want = got.transpose(0, 1), want.transpose(0, 1)
            if "src_key_padding_mask" in kw:  # the fast path may leave padded positions undefined
                got, want = got[~pad], want[~pad]
            assert torch.allclose(got, want, atol=1e-5), kw


def test_refusals_name_the_module():
    x = torch.randn(2, 5, E)
    with pytest.raises(UnsupportedModelError, match="kdim/vdim"):
        head_dim_scores(Holder(nn.MultiheadAttention(E, H, kdim=8, vdim=8)))
    with pytest.raises(UnsupportedModelError, match="bias_k/bias_v"):
        head_dim_scores(Holder(nn.MultiheadAttention(E, H, add_bias_kv=True)))
    with pytest.raises(UnsupportedModelError, match="add_zero_attn"):
        head_dim_scores(Holder(nn.MultiheadAttention(E, H, add_zero_attn=True)))
    small, _, _ = _prune(_mha(), 0.5, 0.5, x)
    with pytest.raises(UnsupportedModelError, match="'attn' .HeadDimAttention.: already head-dim pruned"):
        head_dim_scores(Holder(small))
    with pytest.raises(UnsupportedModelError, match="found no attention to prune"):
        head_dim_scores(nn.Sequential(nn.Linear(E, E)))
    with pytest.raises(ConfigError, match="never called"):
        head_dim_scores(nn.ModuleDict({"a": Holder(_mha())}), [])
