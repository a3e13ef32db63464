"""Head pruning of decoders whose forward reads head state beyond the projections (session 11, Z4).

Phi-3 reads ``self.config.num_attention_heads``, BLOOM adds ALiBi slopes built per config head by the model,
CodeGen interleaves q|v|k over ``mp_num`` shards, OLMo-2 normalises q and k over all heads at once. Each was
refused by the masked-model check; each now equals the masked original exactly (checked here on an explicit
plan with uneven, non-contiguous heads per layer, and inside ``nc.prune_transformer``).
"""

from __future__ import annotations

import pytest
import torch

import netcompress as nc
from netcompress.pruning.transformer_blocks import find_blocks
from netcompress.pruning.transformer_head_state import AlibiHeads, KeptHeadsNorm
from netcompress.pruning.transformer_surgery import TransformerPlan
from tests.transformer_masks import plan_equals_masked

transformers = pytest.importorskip("transformers")


def _tiny(cls: str, cfg: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    base = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=12, vocab_size=50,
                max_position_embeddings=16, pad_token_id=0, bos_token_id=0, eos_token_id=0)  # fmt: skip
    return getattr(transformers, cls)(getattr(transformers, cfg)(**{**base, **kw})).eval()


def _inputs(mask: bool = True) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    if not mask:
        return {"input_ids": ids}
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[0, 5:] = 0
    return {"input_ids": ids, "attention_mask": attention_mask}


def _pruned_equals_masked(
    model: torch.nn.Module, heads: dict, kv: dict, mask: bool = True
) -> torch.nn.Module:
    """Apply an explicit head plan; assert the pruned logits equal the masked original's (and differ from
    the unmasked original's, so the masking is seen)."""
    plan = TransformerPlan(heads=heads, kv_heads=kv)
    return plan_equals_masked(model, plan, lambda m: m(**_inputs(mask)).logits)


def test_phi3_attention_gets_its_own_config_copy_with_the_kept_head_count():
    model = _tiny("Phi3ForCausalLM", "Phi3Config", num_key_value_heads=2)
    names = [f"model.layers.{i}.self_attn" for i in (0, 1)]
    small = _pruned_equals_masked(
        model, {names[0]: [1, 3], names[1]: [0, 1]}, {names[0]: [0, 1], names[1]: [0]}
    )
    a0, a1 = (layer.self_attn for layer in small.model.layers)
    assert (a0.config.num_attention_heads, a0.config.num_key_value_heads) == (2, 2)
    assert (a1.config.num_attention_heads, a1.config.num_key_value_heads, a1.num_key_value_groups) == (
        2,
        1,
        2,
    )
    assert a0.qkv_proj.out_features == (2 + 2 * 2) * 4 and a1.qkv_proj.out_features == (2 + 2) * 4
    assert small.config.num_attention_heads == 4 and model.model.layers[0].self_attn.config is model.config
    assert nc.prune_transformer(model, _inputs(), heads=0.5, ffn=0.5, hidden=0.25)(**_inputs()).logits.shape == (
        2, 7, 50)  # fmt: skip


@pytest.mark.parametrize("mask", [True, False])
def test_bloom_alibi_keeps_each_kept_heads_own_slope(mask):
    model = _tiny("BloomForCausalLM", "BloomConfig", n_layer=2, n_head=4)
    names = [f"transformer.h.{i}.self_attention" for i in (0, 1)]
    small = _pruned_equals_masked(
        model, {names[0]: [1, 3], names[1]: [0, 2, 3]}, {names[0]: [1, 3], names[1]: [0, 2, 3]}, mask
    )
    hooks = [
        [h for h in block.self_attention._forward_pre_hooks.values() if isinstance(h, AlibiHeads)]
        for block in small.transformer.h
    ]
    assert [[(h.keep, h.num_heads) for h in hs] for hs in hooks] == [[([1, 3], 4)], [([0, 2, 3], 4)]]
    assert small.transformer.h[0].self_attention.query_key_value.out_features == 2 * 3 * 4


def test_bloom_pruned_twice_indexes_the_config_heads_and_saves(tmp_path):
    model = _tiny("BloomForCausalLM", "BloomConfig", n_layer=1, n_head=4)
    once = nc.prune_transformer(model, _inputs(), heads=0.25, ffn=0.0)  # 3 heads
    twice = nc.prune_transformer(once, _inputs(), heads=0.34, ffn=0.0)  # 2 heads, checked against `once`
    (hook,) = [h for h in twice.transformer.h[0].self_attention._forward_pre_hooks.values()]
    (first,) = [h for h in once.transformer.h[0].self_attention._forward_pre_hooks.values()]
    assert len(hook.keep) == 2 and set(hook.keep) < set(first.keep) and hook.num_heads == 4
    nc.save(twice, tmp_path / "bloom.nc")
    loaded = nc.load(tmp_path / "bloom.nc", allow_modules=["transformers"])
    with torch.no_grad():
        assert torch.equal(loaded(**_inputs()).logits, twice(**_inputs()).logits)


@pytest.mark.parametrize("n_head", [4, 2])  # 2 heads of 8 channels: each head spans two of the 4 shards
def test_codegen_mp_num_shards_are_written_back_as_one(n_head):
    model = _tiny("CodeGenForCausalLM", "CodeGenConfig", n_embd=16, n_layer=2, num_attention_heads=n_head, n_inner=24,
                  rotary_dim=2, n_positions=16, n_ctx=16)  # fmt: skip
    (u0, u1) = find_blocks(model).attention
    assert (u0.layout, u0.shards, u0.num_heads, u0.head_dim) == ("packed_mp", 4, n_head, 16 // n_head)
    keep = [[1], [0]] if n_head == 2 else [[1, 3], [0, 1, 2]]
    small = _pruned_equals_masked(
        model, {u0.name: keep[0], u1.name: keep[1]}, {u0.name: keep[0], u1.name: keep[1]}
    )
    attn = small.transformer.h[0].attn
    d = 16 // n_head
    assert (attn.mp_num, attn.embed_dim, attn.qkv_proj.out_features) == (
        1,
        len(keep[0]) * d,
        3 * len(keep[0]) * d,
    )


def test_olmo2_all_heads_q_k_norms_read_every_head_and_hand_on_the_kept():
    model = _tiny("Olmo2ForCausalLM", "Olmo2Config", num_key_value_heads=2)
    names = [f"model.layers.{i}.self_attn" for i in (0, 1)]
    small = _pruned_equals_masked(
        model, {names[0]: [1, 3], names[1]: [0, 1]}, {names[0]: [0, 1], names[1]: [0]}
    )
    a0, a1 = (layer.self_attn for layer in small.model.layers)
    assert isinstance(a0.q_norm, KeptHeadsNorm) and a0.q_norm.keep.tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    assert (
        a0.q_proj.out_features == 16 and a0.o_proj.in_features == 8
    )  # q_proj keeps every head: the norm reads them
    assert a1.k_norm.keep.tolist() == [0, 1, 2, 3] and a1.v_proj.out_features == 4
    small = nc.prune_transformer(
        model, _inputs(), heads=0.5, ffn=0.5, hidden=0.25
    )  # q_norm is not a stream norm
    assert small.model.layers[0].self_attn.q_norm.norm.weight.shape == (16,)


def test_olmo2_pruned_is_found_again_and_prunes_again_against_the_pruned_model():
    """After head pruning OLMo-2's q_proj still computes every head (for the norm): ``find_blocks`` reads the
    width the norm hands on, so the model is recognised again (distillation, a second prune)."""
    model = _tiny("Olmo2ForCausalLM", "Olmo2Config", num_key_value_heads=2)
    once = nc.prune_transformer(model, _inputs(), heads=0.5, ffn=0.0)
    (u0, _) = find_blocks(once).attention
    k_kept = len(once.model.layers[0].self_attn.k_norm.keep)
    assert (u0.layout, u0.num_heads, u0.num_kv_heads, u0.head_dim) == ("linear", 2, k_kept // 4, 4)
    kv = [0] if u0.num_kv_heads == 1 else [1]  # head 1 with its own key/value head
    twice = _pruned_equals_masked(once, {u0.name: [1]}, {u0.name: kv})  # checked against `once`, masked
    a, b = once.model.layers[0].self_attn, twice.model.layers[0].self_attn
    assert (len(b.q_norm.keep), b.o_proj.in_features, b.q_proj.out_features) == (4, 4, 16)
    assert b.q_norm.keep.tolist() == a.q_norm.keep.tolist()[4:]
    assert nc.prune_transformer(once, _inputs(), heads=0.0, ffn=0.5, hidden=0.25)(**_inputs()).logits.shape == (
        2, 7, 50)  # fmt: skip
