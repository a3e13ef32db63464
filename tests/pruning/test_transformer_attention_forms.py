"""Attention forms the transformer pruner did not recognise before session 15 (task A; zoo sweep round 7).

MPT: a fused ``Wqkv`` (q|k|v, ``chunk(3)``) with ``out_proj``, an ungated ``up_proj -> down_proj`` FFN, and ALiBi
slopes built per config head by the model and handed to every layer as ``position_bias`` ``(heads, 1, keys)``:
each pruned layer keeps its own kept heads' slopes (checked on an explicit plan with uneven, non-contiguous heads
per layer against the masked original, and inside ``nc.prune_transformer``).
"""

from __future__ import annotations

import pytest
import torch

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError
from netcompress.pruning.transformer_blocks import find_blocks
from netcompress.pruning.transformer_head_state import AlibiHeads
from netcompress.pruning.transformer_surgery import TransformerPlan
from tests.transformer_masks import plan_equals_masked

transformers = pytest.importorskip("transformers")


def _ids() -> torch.Tensor:
    return torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(1))


def _mpt() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.MptConfig(
        vocab_size=50, d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=16
    )
    return transformers.MptForCausalLM(cfg).eval()


def test_mpt_fused_wqkv_alibi_and_ffn_are_found():
    blocks = find_blocks(_mpt())
    assert [(u.layout, u.num_heads, u.head_dim, u.q, u.o) for u in blocks.attention] == [
        ("packed", 4, 8, f"transformer.blocks.{i}.attn.Wqkv", f"transformer.blocks.{i}.attn.out_proj")
        for i in (0, 1)
    ]
    assert [(f.up, f.down, f.width) for f in blocks.ffn] == [
        ([f"transformer.blocks.{i}.ffn.up_proj"], f"transformer.blocks.{i}.ffn.down_proj", 128)
        for i in (0, 1)
    ]
    assert blocks.unknown == {}


def test_mpt_pruned_heads_keep_their_own_alibi_slopes():
    model = _mpt()
    names = [f"transformer.blocks.{i}.attn" for i in (0, 1)]
    plan = TransformerPlan(
        heads={names[0]: [1, 3], names[1]: [0, 2, 3]}, kv_heads={names[0]: [1, 3], names[1]: [0, 2, 3]}
    )
    small = plan_equals_masked(model, plan, lambda m: m(input_ids=_ids()).logits)
    hooks = [
        [h for h in b.attn._forward_pre_hooks.values() if isinstance(h, AlibiHeads)]
        for b in small.transformer.blocks
    ]
    assert [[(h.name, h.keep, h.num_heads) for h in hs] for hs in hooks] == [
        [("position_bias", [1, 3], 4)],
        [("position_bias", [0, 2, 3], 4)],
    ]
    attn = small.transformer.blocks[0].attn
    assert (attn.n_heads, attn.Wqkv.out_features, attn.out_proj.in_features) == (2, 3 * 2 * 8, 2 * 8)


def test_mpt_prune_transformer_heads_ffn_hidden_and_saves(tmp_path):
    model = _mpt()
    small = nc.prune_transformer(model, {"input_ids": _ids()}, heads=0.5, ffn=0.5, hidden=0.25)
    assert [b.attn.n_heads for b in small.transformer.blocks] == [2, 2]
    assert small.transformer.blocks[0].ffn.up_proj.out_features == 64
    nc.save(small, tmp_path / "mpt.nc")
    loaded = nc.load(tmp_path / "mpt.nc", allow_modules=["transformers"])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=_ids()).logits, small(input_ids=_ids()).logits)


def test_mpt_pruned_twice_indexes_the_config_heads():
    model = _mpt()
    once = nc.prune_transformer(model, {"input_ids": _ids()}, heads=0.25, ffn=0.0)  # 3 heads
    twice = nc.prune_transformer(once, {"input_ids": _ids()}, heads=0.34, ffn=0.0)  # 2, checked against `once`
    (first,) = once.transformer.blocks[0].attn._forward_pre_hooks.values()
    (hook,) = twice.transformer.blocks[0].attn._forward_pre_hooks.values()
    assert len(first.keep) == 3 and len(hook.keep) == 2 and set(hook.keep) < set(first.keep) and hook.num_heads == 4


def test_alibi_hook_hands_a_4d_position_bias_on_unchanged():
    hook = AlibiHeads([0, 2], 4, name="position_bias")
    t5_bias = torch.arange(32.0).view(1, 4, 2, 4)
    assert hook(None, (), {"position_bias": t5_bias})[1]["position_bias"] is t5_bias
    mpt_bias = torch.arange(12.0).view(4, 1, 3)
    assert hook(None, (), {"position_bias": mpt_bias})[1]["position_bias"].flatten().tolist() == [
        0,
        1,
        2,
        6,
        7,
        8,
    ]


def _conformer_block() -> torch.nn.Module:
    conformer = pytest.importorskip("conformer")  # lucidrains' package: skipped by name where absent
    torch.manual_seed(0)
    return conformer.ConformerBlock(
        dim=32, dim_head=8, heads=4, ff_mult=2, conv_expansion_factor=2, conv_kernel_size=7
    ).eval()


def test_conformer_q_kv_attention_with_dim_equal_inner_is_told_by_call_order():
    """``to_q`` (32 -> 32), ``to_kv`` (32 -> 64), ``to_out`` (32 -> 32): by widths alone ``to_out`` could be the
    query; the traced forward calls it last. The block is the whole model: its Sequential FFNs are its own."""
    blocks = find_blocks(_conformer_block())
    assert [(u.layout, u.num_heads, u.head_dim, u.q, u.k, u.o) for u in blocks.attention] == [
        ("q_kv", 4, 8, "attn.fn.to_q", "attn.fn.to_kv", "attn.fn.to_out")
    ]
    assert [(f.up, f.down, f.width) for f in blocks.ffn] == [
        ([f"{n}.fn.fn.net.0"], f"{n}.fn.fn.net.3", 64) for n in ("ff1", "ff2")
    ]
    assert blocks.unknown == {}


def test_conformer_relative_position_attention_pruned_equals_masked():
    model = _conformer_block()
    x = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(2))
    plan = TransformerPlan(
        heads={"attn.fn": [0, 3]}, kv_heads={"attn.fn": [0, 3]}, neurons={"ff1.fn.fn.net": [1, 5, 9]}
    )
    small = plan_equals_masked(model, plan, lambda m: m(x))
    attn = small.attn.fn
    assert (attn.heads, attn.to_q.out_features, attn.to_kv.out_features, attn.to_out.in_features) == (
        2,
        16,
        32,
        16,
    )
    assert small.ff1.fn.fn.net[0].out_features == 3
    pruned = nc.prune_transformer(model, x, heads=0.5, ffn=0.5)
    assert pruned.attn.fn.heads == 2 and pruned(x).shape == x.shape
    with pytest.raises(UnsupportedModelError, match=r"convolution 'conv.net.2' reads the 32-wide residual stream"):
        nc.prune_transformer(model, x, heads=0.5, ffn=0.5, hidden=0.25)  # its conv module's pointwise conv


def _led() -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    cfg = transformers.LEDConfig(
        vocab_size=50, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, pad_token_id=0, decoder_start_token_id=2,
        max_encoder_position_embeddings=64, max_decoder_position_embeddings=32, attention_window=[4, 4],
    )  # fmt: skip
    ids = torch.randint(2, 50, (2, 8), generator=torch.Generator().manual_seed(3))
    return transformers.LEDForConditionalGeneration(cfg).eval(), {"input_ids": ids, "decoder_input_ids": ids[:, :4]}


def test_led_longformer_encoder_attention_is_refused_by_name_and_reason_once_per_layer():
    """LED's encoder self-attention (Longformer's, output Linear in the parent) reshapes the heads' output to its
    input's width: refused with that reason, named once (the module holding q/k/v, not also its parent)."""
    model, inputs = _led()
    names = [f"led.encoder.layers.{i}.self_attn.longformer_self_attn" for i in (0, 1)]
    blocks = find_blocks(model)
    assert sorted(blocks.unknown) == names
    assert all("reshapes the heads' output to its input's width" in r for r in blocks.unknown.values())
    with pytest.raises(UnsupportedModelError, match="Longformer-style sliding-window attention") as err:
        nc.prune_transformer(model, inputs, heads=0.5, ffn=0.5)
    assert names[0] in str(err.value) and "'led.encoder.layers.0.self_attn' (" not in str(err.value)


def test_led_ffn_only_prunes_and_keeps_the_outputs_of_the_masked_model():
    model, inputs = _led()
    small = nc.prune_transformer(model, inputs, heads=0.0, ffn=0.5)  # checked against the masked original inside
    assert small.led.encoder.layers[0].fc1.out_features == 24 and small.led.decoder.layers[0].fc1.out_features == 24
    with torch.no_grad():
        assert small(**inputs).logits.shape == model(**inputs).logits.shape


def _perceiver() -> torch.nn.Module:
    perceiver_pytorch = pytest.importorskip("perceiver_pytorch")  # lucidrains' package: skipped by name where absent
    torch.manual_seed(0)
    return perceiver_pytorch.Perceiver(
        input_channels=3, input_axis=2, num_freq_bands=4, max_freq=10.0, depth=2, num_latents=8, latent_dim=32,
        cross_heads=2, latent_heads=4, cross_dim_head=8, latent_dim_head=8, num_classes=10, self_per_cross_attn=1,
    ).eval()  # fmt: skip


def test_perceiver_cross_attention_is_traced_with_a_context_and_geglu_ffn_found():
    """The cross-attention's ``to_kv`` reads the 21-channel Fourier-encoded image, not the 32-wide latents: its
    forward is traced with a context of that width. The FFN is ``Sequential(Linear(d, 2w), GEGLU(), Linear(w, d))``."""
    blocks = find_blocks(_perceiver())
    units = {u.name: (u.layout, u.num_heads, u.head_dim) for u in blocks.attention}
    assert units == {
        **{f"layers.{i}.cross_attn.fn": ("q_kv", 2, 8) for i in (0, 1)},
        **{f"layers.{i}.self_attns.0.0.fn": ("q_kv", 4, 8) for i in (0, 1)},
    }
    ffn = {f.name: (f.up, f.down, f.width, f.halves) for f in blocks.ffn}
    assert ffn["layers.0.cross_ff.fn.net"] == (["layers.0.cross_ff.fn.net.0"], "layers.0.cross_ff.fn.net.2", 128, 2)
    assert len(ffn) == 4 and blocks.unknown == {}


def test_perceiver_cross_and_self_attention_and_geglu_pruned_equal_masked():
    model = _perceiver()
    x = torch.randn(2, 8, 8, 3, generator=torch.Generator().manual_seed(4))
    cross, selfa = "layers.0.cross_attn.fn", "layers.1.self_attns.0.0.fn"
    plan = TransformerPlan(
        heads={cross: [1], selfa: [0, 2]}, kv_heads={cross: [1], selfa: [0, 2]},
        neurons={"layers.0.cross_ff.fn.net": [3, 70, 127], "layers.1.self_attns.0.1.fn.net": list(range(0, 128, 2))},
    )  # fmt: skip
    small = plan_equals_masked(model, plan, lambda m: m(x))
    attn = small.layers[0].cross_attn.fn
    assert (attn.heads, attn.to_q.out_features, attn.to_kv.in_features, attn.to_kv.out_features) == (1, 8, 21, 16)
    assert small.layers[0].cross_ff.fn.net[0].out_features == 6 and small.layers[0].cross_ff.fn.net[2].in_features == 3
    pruned = nc.prune_transformer(model, x, heads=0.5, ffn=0.5)
    assert pruned.layers[1].self_attns[0][0].fn.heads == 2 and pruned(x).shape == (2, 10)
    with pytest.raises(UnsupportedModelError, match="'layers.0.cross_attn.fn.to_kv' reads 21 channels"):
        nc.prune_transformer(model, x, heads=0.5, ffn=0.5, hidden=0.25)


def test_reformer_lsh_attention_is_refused_by_name():
    torch.manual_seed(0)
    cfg = transformers.ReformerConfig(
        vocab_size=50, hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=48,
        axial_pos_shape=[4, 4], axial_pos_embds_dim=[16, 16], max_position_embeddings=16, attn_layers=["local", "lsh"],
        local_attn_chunk_length=4, lsh_attn_chunk_length=4, num_buckets=2, is_decoder=True, pad_token_id=0,
    )  # fmt: skip
    blocks = find_blocks(transformers.ReformerModelWithLMHead(cfg).eval())
    assert blocks.unknown == {
        "reformer.encoder.layers.1.attention.self_attention": "LSHSelfAttention: LSH attention (Reformer): one shared "
        "query_key projection whose heads are hashed into buckets"
    }
