"""Fused mixture-of-experts FFNs (3-D expert weights) are named, never silently left dense (Z4, session 11)."""

from __future__ import annotations

import pytest
import torch

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError
from netcompress.pruning.transformer_experts import fused_experts
from tests.tiny_hf import tiny, tiny_decoder

transformers = pytest.importorskip("transformers")


def _tiny(cls: str, cfg: str, **kw) -> torch.nn.Module:
    return tiny_decoder(cls, cfg, num_key_value_heads=2, num_experts_per_tok=2, **kw)


def _inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(1))}


def test_ffn_pruning_of_fused_experts_only_is_refused_naming_them_heads_still_prune():
    """Heads alone were refused too when experts == heads (4 and 4): the MoE block beside the attention, holding
    no Linear, was taken for a per-head table and its experts / router rows were sliced to the kept heads."""
    model = _tiny("MixtralForCausalLM", "MixtralConfig", num_local_experts=4)
    assert fused_experts(model) == {
        "model.layers.0.mlp.experts": "MixtralExperts: 4 experts fused in 3-D weights gate_up_proj, down_proj"
    }
    with pytest.raises(
        UnsupportedModelError, match=r"'model.layers.0.mlp.experts' \(MixtralExperts: 4 experts"
    ):
        nc.prune_transformer(model, _inputs(), heads=0.5, ffn=0.5)
    small = nc.prune_transformer(model, _inputs(), heads=0.5, ffn=0.0)
    assert small.model.layers[0].self_attn.o_proj.in_features == 8


def test_qwen2_moe_shared_expert_prunes_and_the_fused_experts_left_dense_are_named():
    from netcompress.core.methods import MethodData, apply
    from netcompress.pruning.transformer_pruning import TransformerPruneConfig

    model = _tiny("Qwen2MoeForCausalLM", "Qwen2MoeConfig", num_experts=4, moe_intermediate_size=8,
                  shared_expert_intermediate_size=12)  # fmt: skip
    result = apply(model, TransformerPruneConfig(heads=0.0, ffn=0.5), MethodData(example_inputs=_inputs()))
    mlp = result.model.model.layers[0].mlp
    assert mlp.shared_expert.down_proj.in_features == 6 and tuple(mlp.experts.down_proj.shape) == (4, 16, 8)
    assert list(result.summary["ffn_not_pruned"]) == ["model.layers.0.mlp.experts"]
    vit = tiny("ViTForImageClassification", "ViTConfig", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=12, image_size=8, patch_size=4)  # fmt: skip
    assert fused_experts(vit) == {}  # 3-D position embeddings and cls token are no experts
