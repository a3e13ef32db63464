"""Pruning heads of an already-pruned transformer: each prune halves again, checked against the ORIGINAL
model with the heads of both prunes masked, until a block is down to ``min_heads`` (then a refusal).

Llama with grouped-query attention (4 query heads over 2 key/value groups) kept 2 heads over 1 group after a
first ``heads=0.5``; a second removed nothing: ``gqa="groups"`` removes whole groups and one group cannot go.
Now query heads go within the group (the summary names the block in ``gqa_queries_fallback``).
"""

from __future__ import annotations

import pytest
import torch

from netcompress.core.errors import ConfigError
from netcompress.pruning.transformer_pruning import TransformerPruneConfig, transformer_prune
from tests.pruning.transformer_cases import masked_original as _masked
from tests.pruning.transformer_cases import model_output as _out
from tests.tiny_hf import hf_family as _hf

transformers = pytest.importorskip("transformers")
HALF = TransformerPruneConfig(heads=0.5, ffn=0.0)


def _prune_twice(model, inputs):
    once, first = transformer_prune(model, inputs, HALF)
    twice, second = transformer_prune(once, inputs, HALF)
    # the second prune's kept heads are indices into the first's: map them back to the original's heads
    kept = {r["name"]: r["kept"] for r in first["heads"]}
    both = [{"name": r["name"], "kept": [kept[r["name"]][k] for k in r["kept"]]} for r in second["heads"]]
    return twice, first, second, {"heads": both, "ffn": []}


@pytest.mark.parametrize("family", ["bert", "gpt2", "vit", "llama"])
def test_a_second_heads_prune_halves_again_and_equals_the_masked_original(family):
    model, inputs = _hf(family)
    twice, first, second, both = _prune_twice(model, inputs)
    assert [(r["before"], r["after"]) for r in first["heads"]] == [(4, 2), (4, 2)]
    assert [(r["before"], r["after"]) for r in second["heads"]] == [(2, 1), (2, 1)]
    torch.testing.assert_close(_out(twice, inputs), _out(_masked(model, both), inputs), atol=1e-5, rtol=1e-5)
    assert second["params_after"] == sum(p.numel() for p in twice.parameters()) < first["params_after"]
    with pytest.raises(
        ConfigError, match=r"would remove nothing: heads=0.5 removes no head \('.*' has 1, .* min_heads=1\)"
    ):
        transformer_prune(twice, inputs, HALF)


def test_llama_grouped_query_heads_go_within_the_last_group():
    model, inputs = _hf("llama")  # 4 query heads over 2 key/value groups
    twice, first, second, _ = _prune_twice(model, inputs)
    assert [(r["kv_before"], r["kv_after"]) for r in first["heads"]] == [(2, 1), (2, 1)]
    assert "gqa_queries_fallback" not in first  # a whole group went
    assert [(r["kv_before"], r["kv_after"]) for r in second["heads"]] == [(1, 1), (1, 1)]
    assert second["gqa_queries_fallback"] == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    attn = twice.model.layers[0].self_attn
    head_dim = attn.head_dim
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (
        head_dim,
        head_dim,
        head_dim,
    )
    assert attn.num_key_value_groups == 1


def test_multi_query_llama_prunes_query_heads_at_the_first_prune():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=1, intermediate_size=48,
        vocab_size=99,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    inputs = {"input_ids": torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(2))}
    small, summary = transformer_prune(model, inputs, HALF)  # verified against the masked model inside
    assert [(r["before"], r["after"], r["kv_after"]) for r in summary["heads"]] == [(4, 2, 1)]
    assert small.model.layers[0].self_attn.num_key_value_groups == 2
    torch.testing.assert_close(
        _out(small, inputs), _out(_masked(model, summary), inputs), atol=1e-5, rtol=1e-5
    )
