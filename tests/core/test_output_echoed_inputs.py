"""A model returning a dict that passes its inputs back (a sentence-transformers model returns its features
dict: ``input_ids``, ``attention_mask``, ..., ``token_embeddings``, ``sentence_embedding``) is read by its
result, not by its first entry: the token ids used to be taken as the model's output (embedding metrics of
ids; a shape error at best)."""

import torch
from torch import nn

from netcompress.core.inputs import output_tensor
from netcompress.evaluation.embeddings import embed


class FeaturesDict(nn.Module):
    """What a wrapped sentence-transformers model returns."""

    def __init__(self, sentence=True):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.sentence = sentence

    def forward(self, input_ids, attention_mask):
        tokens = self.emb(input_ids)
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "modality": "text"}
        out["token_embeddings"] = tokens
        if self.sentence:
            out["sentence_embedding"] = 2 * tokens[:, 0]
        return out


def test_sentence_embedding_is_the_output():
    ids, mask = torch.randint(0, 20, (3, 5)), torch.ones(3, 5, dtype=torch.long)
    model = FeaturesDict()
    out = model(ids, mask)
    assert output_tensor(out) is out["sentence_embedding"]
    batch = [{"input_ids": ids, "attention_mask": mask}]
    assert torch.equal(embed(model, batch), 2 * model.emb(ids)[:, 0].detach())


def test_integer_and_string_entries_are_skipped():
    ids, mask = torch.randint(0, 20, (3, 5)), torch.ones(3, 5, dtype=torch.long)
    out = FeaturesDict(sentence=False)(ids, mask)
    assert output_tensor(out) is out["token_embeddings"]
    flags = {"done": torch.ones(2, dtype=torch.bool), "scores": torch.randn(2, 3)}
    assert output_tensor(flags) is flags["scores"]
    assert output_tensor({"logits": torch.ones(1, 2), "ids": torch.ones(1, dtype=torch.long)}).shape == (1, 2)
