"""diffusers' attention and feed-forward blocks: ``Attention`` (``heads``, ``to_q/to_k/to_v``, ``to_out[0]`` of a
ModuleList ``[Linear, Dropout]``; ``attn2`` is cross-attention) and ``FeedForward`` (a ModuleList ``net`` run in order:
``GEGLU``/``GELU`` holding ``proj``, Dropout, Linear), in ``BasicTransformerBlock`` as ``Transformer2DModel`` (the
UNet's spatial transformer) and ``DiTTransformer2DModel`` build it from tiny configs.

Each prune is compared with the original whose removed heads' output columns and removed neurons' down columns are
zero (``masked``): a wrong claim about which rows are q, k, v or which half of a GEGLU is the gate cannot pass it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.pruning.transformer_blocks import find_blocks
from netcompress.pruning.transformer_pruning import TransformerPruneConfig, transformer_prune
from tests.transformer_masks import masked_heads_and_neurons

diffusers = pytest.importorskip("diffusers")


def prune_and_compare(model: nn.Module, x: tuple) -> tuple[nn.Module, dict]:
    model = model.eval()
    small, summary = transformer_prune(model, x, TransformerPruneConfig(heads=0.5, ffn=0.5))
    with torch.no_grad():
        got, want, full = small(*x)[0], masked_heads_and_neurons(model, summary)(*x)[0], model(*x)[0]
    assert (got - want).abs().max().item() < 1e-5
    assert (got - full).abs().max().item() > 1e-4  # the comparison tells pruned from unpruned
    return small, summary


def test_spatial_transformer_with_cross_attention_and_geglu() -> None:
    torch.manual_seed(0)
    model = diffusers.Transformer2DModel(num_attention_heads=4, attention_head_dim=4, in_channels=8, norm_num_groups=4,
                                         cross_attention_dim=12)  # fmt: skip
    blocks = find_blocks(model)
    assert not blocks.unknown
    assert [(u.name, u.layout, u.num_heads, u.head_dim, u.k, u.o) for u in blocks.attention] == [
        (f"transformer_blocks.0.{a}", "linear", 4, 4, f"transformer_blocks.0.{a}.to_k", f"transformer_blocks.0.{a}.to_out.0")
        for a in ("attn1", "attn2")
    ]  # fmt: skip
    ffn = blocks.ffn[0]  # GEGLU: proj holds value | gate, 4 * 16 neurons
    assert (ffn.up, ffn.down, ffn.width, ffn.halves) == (
        ["transformer_blocks.0.ff.net.0.proj"], "transformer_blocks.0.ff.net.2", 64, 2
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 5, 12, generator=g))
    small, summary = prune_and_compare(model, x)
    block = small.transformer_blocks[0]
    assert [h["after"] for h in summary["heads"]] == [2, 2]
    assert (block.attn1.heads, block.attn2.heads, block.attn2.to_k.out_features, block.attn2.to_k.in_features) == (
        2, 2, 8, 12
    )  # fmt: skip
    assert (block.attn1.to_out[0].in_features, block.ff.net[0].proj.out_features, block.ff.net[2].in_features) == (
        8, 64, 32
    )  # fmt: skip


def test_dit_with_gelu_ffn() -> None:
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2,
                                            sample_size=8, patch_size=2, num_embeds_ada_norm=10)  # fmt: skip
    blocks = find_blocks(model)
    assert [(u.layout, u.num_heads) for u in blocks.attention] == [("linear", 2), ("linear", 2)]
    assert [(f.up, f.width, f.halves) for f in blocks.ffn][0] == (["transformer_blocks.0.ff.net.0.proj"], 64, 1)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 1000, (2,), generator=g),
         torch.randint(0, 10, (2,), generator=g))  # fmt: skip
    small, _ = prune_and_compare(model, x)
    assert small.transformer_blocks[1].attn1.heads == 1 and small.transformer_blocks[1].ff.net[2].in_features == 32
