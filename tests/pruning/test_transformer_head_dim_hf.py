"""Head-dim pruning of Hugging Face BERT/ViT self-attention; other attention classes refused by name."""

from __future__ import annotations

import copy

import pytest
import torch

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import call_model, output_tensor
from netcompress.pruning import prune_head_dims
from netcompress.pruning.transformer_head_dim import head_dim_scores, masked_reference
from netcompress.pruning.transformer_pruning import count_macs
from tests.tiny_hf import hf_family


@pytest.mark.parametrize("family", ["bert", "vit"])
@pytest.mark.parametrize("calib", [True, False])
def test_bert_and_vit_equal_the_masked_original(family, calib):
    model, inputs = hf_family(family)
    batches = [inputs] if calib else None
    small = prune_head_dims(model, inputs, qk=0.5, v=0.5, ffn=0.25, calib=batches)
    if family == "bert":
        attn = small.bert.encoder.layer[0].attention.self
        assert (attn.num_attention_heads, attn.attention_head_size, attn.all_head_size) == (4, 4, 16)
        assert attn.query.out_features == attn.value.out_features == attn.key.out_features == 16
    else:
        attn = small.vit.layers[0].attention
        assert attn.head_dim == 4 and attn.q_proj.out_features == attn.v_proj.out_features == 16
    assert attn.scaling == 8**-0.5  # the source's scale
    # the masked reference: FFN pruned the same way, q/k/v rows zeroed (recomputed from the same scores)
    from netcompress.pruning import TransformerPruneConfig
    from netcompress.pruning.transformer_pruning import transformer_prune

    ffn_only, _ = transformer_prune(
        model, inputs, TransformerPruneConfig(heads=0.0, ffn=0.25), loader=batches
    )
    scores = head_dim_scores(ffn_only, batches)
    kept = {
        n: ([sorted(r.topk(4).indices.tolist()) for r in qk], [sorted(r.topk(4).indices.tolist()) for r in v])
        for n, (qk, v) in scores.items()
    }
    masked = masked_reference(copy.deepcopy(ffn_only), kept)
    with torch.no_grad():
        got, want = (output_tensor(call_model(m, inputs)) for m in (small, masked))
        assert torch.allclose(got, want, atol=1e-5)
        assert not torch.allclose(got, output_tensor(call_model(ffn_only, inputs)), atol=1e-4)
    assert count_macs(small, inputs) < count_macs(ffn_only, inputs)


def test_bert_needs_equal_qk_and_v_counts_and_other_classes_are_refused():
    model, inputs = hf_family("bert")
    with pytest.raises(ConfigError, match="BertSelfAttention.*must keep the same number of channels"):
        prune_head_dims(model, inputs, qk=0.5, v=0.25)
    gpt2, ids = hf_family("gpt2")
    with pytest.raises(UnsupportedModelError, match="GPT2Attention"):
        prune_head_dims(gpt2, ids, qk=0.5, v=0.5)
    llama, ids = hf_family("llama")
    with pytest.raises(UnsupportedModelError, match="LlamaAttention"):
        prune_head_dims(llama, ids, qk=0.5, v=0.5)


def test_rope_attention_is_refused_by_name():
    from tests.tiny_hf import FAMILIES, tiny

    cls, cfg, kw = FAMILIES["llama"]
    llama = tiny(cls, cfg, **{**kw, "num_key_value_heads": 4})  # no grouped-query: RoPE is what is refused
    _, ids = hf_family("llama")
    with pytest.raises(UnsupportedModelError, match=r"LlamaAttention.*RoPE"):
        prune_head_dims(llama, ids, qk=0.5, v=0.5)
