"""Attention forms the transformer pruner did not recognise before session 15 (task A; zoo sweep round 7).

MPT: a fused ``Wqkv`` (q|k|v, ``chunk(3)``) with ``out_proj``, an ungated ``up_proj -> down_proj`` FFN, and ALiBi
slopes built per config head by the model and handed to every layer as ``position_bias`` ``(heads, 1, keys)``:
each pruned layer keeps its own kept heads' slopes (checked on an explicit plan with uneven, non-contiguous heads
per layer against the masked original, and inside ``nc.prune_transformer``).
"""

from __future__ import annotations

import copy

import pytest
import torch

import netcompress as nc
from netcompress.pruning.transformer_blocks import find_blocks
from netcompress.pruning.transformer_head_state import AlibiHeads
from netcompress.pruning.transformer_surgery import TransformerPlan, apply_transformer_plan_
from netcompress.pruning.transformer_verify import masked_reference

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
    blocks = find_blocks(model)
    ref = masked_reference(model, blocks, plan, None)
    small = copy.deepcopy(model)
    apply_transformer_plan_(small, find_blocks(small), plan)
    with torch.no_grad():
        want, got, full = (m(input_ids=_ids()).logits for m in (ref, small, model))
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (full - want).abs().max() > 1e-3  # the masking is seen
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


def test_mpt_prune_transformer_heads_ffn_hidden():
    model = _mpt()
    small = nc.prune_transformer(model, {"input_ids": _ids()}, heads=0.5, ffn=0.5, hidden=0.25)
    assert [b.attn.n_heads for b in small.transformer.blocks] == [2, 2]
    assert small.transformer.blocks[0].ffn.up_proj.out_features == 64
    assert small(input_ids=_ids()).logits.shape == (2, 7, 50)


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
