"""The offline English corpus (Python's documentation prose) and its tokenised batches."""

import pytest
import torch

from netcompress.core.errors import ConfigError
from netcompress.data.sentences import TokenizedSentences, python_doc_sentences, split_sentences


def test_corpus_is_plain_prose_and_deterministic():
    sentences = python_doc_sentences()
    assert len(sentences) > 1000
    assert sentences == python_doc_sentences()
    assert len(set(sentences)) == len(sentences)
    assert all(40 <= len(s) <= 200 and s[0].isupper() and "`" not in s for s in sentences)


def test_split_is_disjoint_seeded_and_refuses_too_much():
    sentences = python_doc_sentences()[:100]
    parts = split_sentences(sentences, val=10, test=20, seed=3)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [70, 10, 20]
    assert not set(parts["test"]) & set(parts["train"]) and not set(parts["val"]) & set(parts["train"])
    assert parts == split_sentences(sentences, val=10, test=20, seed=3)
    assert parts != split_sentences(sentences, val=10, test=20, seed=4)
    with pytest.raises(ConfigError, match="leave no training sentences"):
        split_sentences(sentences, val=50, test=50)


def test_tokenised_items_are_dicts_of_fixed_length():
    class CharTokenizer:
        def __call__(self, texts, padding, truncation, max_length, return_tensors):
            ids = torch.zeros(len(texts), max_length, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, text in enumerate(texts):
                codes = [ord(c) % 100 for c in text[:max_length]]
                ids[row, : len(codes)] = torch.tensor(codes)
                mask[row, : len(codes)] = 1
            return {"input_ids": ids, "attention_mask": mask}

    data = TokenizedSentences(["Hello there.", "Hi."], CharTokenizer(), max_length=8)
    assert len(data) == 2
    assert data[1]["attention_mask"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    batch = torch.utils.data.default_collate([data[0], data[1]])
    assert batch["input_ids"].shape == (2, 8) and batch["input_ids"].dtype == torch.long
    with pytest.raises(ConfigError, match="no sentences"):
        TokenizedSentences([], CharTokenizer())
