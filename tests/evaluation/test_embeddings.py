"""Embedding comparison: cosine to the original and nearest-neighbour agreement."""

import pytest
import torch
from torch import nn

from netcompress.evaluation.embeddings import compare_embeddings, embed, mean_pool


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]
    assert mean_pool(hidden, None).shape == (1, 2)


def test_compare_counts_neighbours_and_cosines():
    ref = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    same = compare_embeddings(ref, ref * 3)
    assert same["cosine_mean"] == pytest.approx(1.0) and same["nn_agreement"] == 1.0
    swapped = ref[[0, 2, 1, 3]].clone()  # sentences 1 and 2 trade embeddings
    moved = compare_embeddings(ref, swapped)
    assert moved["nn_agreement"] == 0.0  # every neighbour changes
    assert moved["cosine_min"] == pytest.approx(0.0, abs=0.2)
    with pytest.raises(ValueError, match="differ in shape"):
        compare_embeddings(ref, ref[:2])


def test_embed_pools_dict_batches_with_their_mask():
    class Encoder(nn.Module):
        def forward(self, input_ids, attention_mask):
            return {"last_hidden_state": input_ids.float().unsqueeze(-1).repeat(1, 1, 2)}

    batches = [{"input_ids": torch.tensor([[2, 4, 9]]), "attention_mask": torch.tensor([[1, 1, 0]])}]
    out = embed(Encoder(), batches)
    assert out.tolist() == [[3.0, 3.0]]


def test_embed_matches_sentence_transformers_pooling_on_a_tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20, vocab_size=50
    )
    model = transformers.BertModel(config)
    ids = torch.randint(1, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    out = embed(model, [{"input_ids": ids, "attention_mask": mask}])
    model.eval()
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(out[0], hidden[0, :4].mean(0), atol=1e-6)
