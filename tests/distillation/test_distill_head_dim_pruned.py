"""Layer distillation of a head-dim-pruned student (``nc.prune_head_dims``): every head is kept, only the
query/key and value channels inside each head shrink, so attention maps (N, H, L, S) and hidden states still
line up with the unpruned teacher's."""

from __future__ import annotations

import pytest
import torch

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.distillation import distill_transformer_
from netcompress.distillation.transformer_taps import TransformerTaps
from netcompress.pruning.transformer_head_dim import HeadDimAttention

QUIET = {"progress": False}


def _vit():
    torch.manual_seed(0)
    return nc.models.create("vit_tiny", image_size=8, patch_size=4, dim=32, depth=2, heads=4, mlp_dim=48)


def test_taps_read_the_head_dim_pruned_attention_as_it_computes_it():
    teacher = _vit()
    x = torch.randn(4, 3, 8, 8)
    student = nc.prune_head_dims(teacher, x, qk=0.5, v=0.75).eval()
    attn = student.encoder.layers[0].self_attn
    assert isinstance(attn, HeadDimAttention) and (attn.num_heads, attn.qk_dim, attn.v_dim) == (4, 4, 2)
    taps = TransformerTaps(student, who="student")
    assert taps.num_layers == 2 and not taps.unknown
    with torch.no_grad():
        student(x)
        layer = student.encoder.layers[0]
        tokens = layer.norm1(taps.hidden(0))
        want = attn(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)[1]
        got = taps.attention_scores(1).softmax(-1)
    assert got.shape == (4, 4, 5, 5)
    assert torch.allclose(got, want, atol=1e-6)
    assert taps.values(1).shape == (4, 5, 4 * 2)  # 4 heads x 2 value channels
    taps.close()


@pytest.mark.parametrize("value_weight", [0.0, 1.0])
def test_distillation_of_a_head_dim_pruned_vit_lowers_the_layer_losses(value_weight):
    teacher = _vit()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, 8, 8, generator=gen) for _ in range(3)]  # no labels: the layer terms only
    student = nc.prune_head_dims(teacher, batches[0], qk=0.5, v=0.5)
    summary = distill_transformer_(
        student, teacher, batches, val_loader=batches[:1], epochs=4, lr=3e-3, value_weight=value_weight, **QUIET
    )
    assert summary["layer_map"] == [1, 2]
    assert summary["val_attention_loss_before"] > 1e-3
    assert summary["val_attention_loss_after"] < summary["val_attention_loss_before"]
    assert summary["val_hidden_loss_after"] < summary["val_hidden_loss_before"]
    if value_weight:
        assert summary["val_value_loss_after"] < summary["val_value_loss_before"]


def test_value_relations_over_heads_that_do_not_divide_the_pruned_value_width_are_refused():
    teacher = _vit()
    x = torch.randn(8, 3, 8, 8)
    student = nc.prune_head_dims(teacher, x, qk=0.5, v=0.75)  # value width 4 x 2 = 8
    with pytest.raises(ConfigError, match="relation_heads=3 does not divide the student's value width 8"):
        distill_transformer_(
            student, teacher, [(x, torch.zeros(8, dtype=torch.long))], epochs=1, value_weight=1.0,
            relation_heads=3, **QUIET,
        )  # fmt: skip
