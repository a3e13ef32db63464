"""English sentences available offline: the prose of Python's own documentation topics.

Every Python installation ships ``pydoc_data.topics`` (the text behind ``help('assert')`` and
friends: about 470 KB of English reference prose). :func:`python_doc_sentences` splits it into
sentences and keeps the plain-prose ones, so sentence-encoder recipes and benchmarks have a corpus
without a download. The text belongs to the Python version that runs, so record it with results.

Example:
    >>> sentences = python_doc_sentences()
    >>> len(sentences) > 1000, sentences[0][:20]
    (True, 'In the current imple')
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from netcompress.core.errors import ConfigError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MARKUP = set("*=>|[{`")


def python_doc_sentences(min_chars: int = 40, max_chars: int = 200) -> list[str]:
    """Plain-prose sentences of ``pydoc_data.topics``, in the order they appear, without duplicates."""
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # stripped-down Python builds
        raise ConfigError(f"this Python ({sys.version.split()[0]}) ships no pydoc_data: {exc}") from exc
    seen: set[str] = set()
    out = []
    for key in sorted(topics):
        for raw in _SENTENCE_END.split(" ".join(topics[key].split())):
            sentence = raw.strip()
            if not (min_chars <= len(sentence) <= max_chars) or not sentence[0].isupper():
                continue
            if _MARKUP & set(sentence) or sentence in seen:
                continue
            seen.add(sentence)
            out.append(sentence)
    return out


def split_sentences(sentences: Sequence[str], *, val: int, test: int, seed: int = 0) -> dict[str, list[str]]:
    """Seeded disjoint ``train`` / ``val`` / ``test`` lists (``val`` and ``test`` are counts).

    Example:
        >>> parts = split_sentences([f"s{i}" for i in range(10)], val=2, test=3)
        >>> [len(parts[k]) for k in ("train", "val", "test")]
        [5, 2, 3]
    """
    if val < 0 or test < 0 or val + test >= len(sentences):
        raise ConfigError(f"val={val} and test={test} leave no training sentences out of {len(sentences)}")
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    pick = [sentences[i] for i in order]
    return {"test": pick[:test], "val": pick[test : test + val], "train": pick[test + val :]}


class TokenizedSentences(Dataset):
    """Sentences tokenised once to fixed length: items are dicts ``{input_ids, attention_mask}``.

    ``tokenizer`` is any Hugging Face tokenizer (called with ``padding='max_length'``).
    A default collate stacks the items into the dict batches models take as keyword arguments.
    """

    def __init__(self, sentences: Sequence[str], tokenizer: Any, max_length: int = 64) -> None:
        if not sentences:
            raise ConfigError("no sentences to tokenise")
        encoded = tokenizer(
            list(sentences), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        self.input_ids = encoded["input_ids"]
        self.attention_mask = encoded["attention_mask"]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index]}
