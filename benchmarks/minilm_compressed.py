"""Pruned + distilled + int8 all-MiniLM-L6-v2 against ONNX Runtime float (issue 15's third MiniLM target).

Target: <= 0.6x encoder parameters (the 6 transformer layers), >= 3x faster than ORT float, mean embedding
cosine >= 0.95 and nearest-neighbour agreement >= 85% on the 512 test sentences of ``minilm_int8.py``
(``python_doc_sentences`` split with seed 0: test 512, validation 256; batch 32, length 64, 2 threads).

Three stages, each cached under ``benchmarks/.cache/minilm_compressed`` (git-ignored) so that a 15-minute
timeout loses nothing:

1. ``prune``: candidate ``nc.prune_transformer`` settings (importance, ``reconstruct``, heads/FFN shares)
   scored on the VALIDATION sentences (cosine to the unpruned model); the best one within the parameter
   budget is saved (``nc.save``) as the student.
2. ``distill``: ``nc.distill_transformer_`` from the unpruned model (hidden states + attention maps +
   pooled-embedding cosine) on unlabelled text: the training part of the Python documentation sentences
   plus the docstring sentences of the standard library's source (read with ``ast``, never imported;
   sentences equal to a validation or test sentence dropped). An "epoch" of ``fit`` is one chunk of
   ``--chunk`` sentences (batches of similar length, trimmed to their longest sentence), so ``fit``'s
   per-epoch checkpoint makes the run resumable; ``--max-minutes`` stops before a chunk that would not
   fit. Every chunk records the validation cosine / agreement (the curve; history.json).
3. ``final``: the distilled student, dynamic int8 (``nc.quantize``), exported with int8 kernels; ORT
   float, ORT ``quantize_dynamic`` (peer) and the student (float, int8) timed interleaved
   (``time_alternating``); cosine / agreement on the 512 test sentences.

    python benchmarks/minilm_compressed.py prune
    nice -n 10 timeout 900 python benchmarks/minilm_compressed.py distill --max-minutes 12   # repeat
    python benchmarks/minilm_compressed.py final --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere: script_path beside us
    sys.path.append(str(Path(__file__).resolve().parent))
from script_path import import_real_transformers  # noqa: E402

import_real_transformers(__file__)  # the real `transformers`, then the repo root on the path

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import netcompress as nc  # noqa: E402
from benchmarks.minilm_compressed_final import stage_final  # noqa: E402
from benchmarks.minilm_student import (  # noqa: E402
    allowed_modules,
    load_minilm,
    loader,
    run_name,
    site_corpus,
)
from benchmarks.transformers_distill import (  # noqa: E402
    BudgetReached,
    ChunkSampler,
    NeighbourChunkSampler,
    TimeBudget,
    ValidationCurve,
    corpus,
    encoder_params,
    trimmed_collate,
)
from netcompress.data.sentences import TokenizedSentences  # noqa: E402
from netcompress.evaluation.embeddings import compare_embeddings, embed  # noqa: E402
from netcompress.pruning.transformer_pruning import count_macs  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache" / "minilm_compressed"


def parse_candidate(text: str) -> dict[str, Any]:
    """``wanda+rec@0.25:0.5`` -> importance wanda, reconstruct, heads 0.25, ffn 0.5 (``+global``: allocation
    global at the uniform shares' MACs). ``@0:0.5:0.5:0.25``: heads 0, ffn 0.5, and the shares of query/key
    and value channels removed inside every head (``nc.prune_head_dims``; heads must be 0)."""
    name, _, shares = text.partition("@")
    values = [float(x) for x in (shares or "0.25:0.5").split(":")]
    heads, ffn = values[:2]
    qk, v = (values[2:] + [0.0, 0.0])[:2]
    words = name.split("+")
    if (qk or v) and (heads or "global" in words):
        raise SystemExit(f"{text}: head-dim shares go with heads 0 and no global allocation")
    return {
        "importance": words[0],
        "reconstruct": "rec" in words,
        "global": "global" in words,
        "heads": heads,
        "ffn": ffn,
        "qk": qk,
        "v": v,
    }


def prune_candidate(teacher: nn.Module, example: Any, calib: DataLoader, cand: dict[str, Any]) -> nn.Module:
    if cand["qk"] or cand["v"]:
        return nc.prune_head_dims(
            teacher, example, qk=cand["qk"], v=cand["v"], ffn=cand["ffn"], calib=calib,
            calib_batches=len(calib), importance=cand["importance"], reconstruct=cand["reconstruct"],
        )  # fmt: skip
    kwargs = {"heads": cand["heads"], "ffn": cand["ffn"], "importance": cand["importance"], "loader": calib}
    kwargs.update(calib_batches=len(calib), reconstruct=cand["reconstruct"])
    if cand["global"]:
        uniform = nc.prune_transformer(teacher, example, heads=cand["heads"], ffn=cand["ffn"])
        target = count_macs(teacher, example) / count_macs(uniform, example)
        kwargs.update(allocation="global", mac_target=target)
    return nc.prune_transformer(teacher, example, **kwargs)


def stage_prune(
    args: argparse.Namespace, teacher: nn.Module, tokenizer: Any, parts: dict[str, list[str]]
) -> None:
    val = loader(parts["val"], tokenizer)
    calib = loader(parts["train"][: args.calib], tokenizer)
    reference = embed(teacher, val)
    example = next(iter(calib))
    rows, best = [], None
    args.out.mkdir(parents=True, exist_ok=True)
    for text in args.candidates.split(","):
        started = time.perf_counter()
        small = prune_candidate(teacher, example, calib, parse_candidate(text))
        ratio = encoder_params(small) / encoder_params(teacher)
        row = {
            "candidate": text,
            "encoder_params_ratio": round(ratio, 4),
            **compare_embeddings(reference, embed(small, val)),
            "macs_ratio": round(count_macs(small, example) / count_macs(teacher, example), 4),
            "seconds": round(time.perf_counter() - started, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if ratio <= args.max_params and (best is None or row["cosine_mean"] > best["cosine_mean"]):
            best = row  # saved at once: a timeout loses only the candidate in progress
            nc.save(small, args.out / "pruned.nc", allow_modules=allowed_modules(teacher))
        record = {"rows": rows, "chosen": best, "calib": args.calib}
        (args.out / "prune.json").write_text(json.dumps(record, indent=1))
    if best is None:
        raise SystemExit(f"no candidate within {args.max_params}x encoder parameters")
    print(f"chosen on validation: {best['candidate']} -> {args.out / 'pruned.nc'}")


def teacher_embeddings(teacher: nn.Module, sentences: list[str], tokenizer: Any, out: Path) -> torch.Tensor:
    """The teacher's embeddings of the training sentences, cached beside the run (our own tensor file)."""
    import hashlib

    key = hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:16]
    path = out / f"teacher-train-{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    data = TokenizedSentences(sentences, tokenizer, 64)
    order = sorted(range(len(sentences)), key=data.attention_mask.sum(1).tolist().__getitem__)
    batches = DataLoader(data, batch_size=64, sampler=order, collate_fn=trimmed_collate)  # little padding
    found = embed(teacher, batches)[torch.argsort(torch.tensor(order))]
    out.mkdir(parents=True, exist_ok=True)
    torch.save(found, path)
    return found


def stage_distill(
    args: argparse.Namespace, teacher: nn.Module, tokenizer: Any, parts: dict[str, list[str]]
) -> None:
    start = args.start or args.out / "pruned.nc"
    student = nc.load(start, allow_modules=allowed_modules(teacher))
    student.embeddings.word_embeddings.weight.requires_grad_(args.train_embeddings)
    for module in student.modules():
        if isinstance(module, nn.Dropout):
            module.p = args.dropout
    train_text = parts["train"]
    if args.site_sentences:
        extra = site_corpus(parts, args.site_sentences, args.out.parent / "site_sentences.json", args.seed)
        train_text = train_text + extra
    train_set = TokenizedSentences(train_text, tokenizer, 64)
    lengths = train_set.attention_mask.sum(1).tolist()
    if args.neighbour_groups:
        sampler: ChunkSampler = NeighbourChunkSampler(
            lengths, teacher_embeddings(teacher, train_text, tokenizer, args.out), chunk=args.chunk,
            batch_size=32, group=args.neighbour_groups, seed=args.seed,
        )  # fmt: skip
    else:
        sampler = ChunkSampler(lengths, chunk=args.chunk, batch_size=32, seed=args.seed)
    train = DataLoader(train_set, batch_size=32, sampler=sampler, collate_fn=trimmed_collate)
    val = loader(parts["val"], tokenizer)
    folder = args.out / run_name(args)
    print(
        f"{len(train_text)} training sentences, {sampler.chunks} chunks of {sampler.chunk} a pass; {folder}"
    )
    hooks = [ValidationCurve(embed(teacher, val), val), TimeBudget(args.max_minutes, stop_at=args.stop_at)]
    if args.bank_weight:  # its own hook (a tensor is no config field): one more teacher forward a step
        from netcompress.distillation import EmbeddingDistillation

        found = teacher_embeddings(teacher, train_text, tokenizer, args.out)
        pick = torch.randperm(len(found), generator=torch.Generator().manual_seed(args.seed))[: args.bank_size]
        hooks.append(EmbeddingDistillation(teacher, cosine_weight=0, bank_weight=args.bank_weight, bank=found[pick]))
    started, stopped = time.perf_counter(), None
    try:
        nc.distill_transformer_(
            student, teacher, train, example_inputs=next(iter(val)), hooks=hooks, checkpoint_dir=folder, resume=True,
            hidden_weight=args.hidden_weight, attention_weight=args.attention_weight,
            embedding_weight=args.embedding_weight, similarity_weight=args.similarity_weight,
            similarity_temperature=args.similarity_temperature, tail_weight=args.tail_weight,
            tail_power=args.tail_power, tail_top_k=args.tail_top_k, epochs=args.chunks, lr=args.lr, warmup_epochs=args.warmup,
            seed=args.seed, progress=False,
        )  # fmt: skip
    except BudgetReached as exc:
        stopped = str(exc)
    history = folder / "history.json"
    rows = json.loads(history.read_text())["rows"] if history.exists() else []
    nc.save(student, folder / "student.nc", allow_modules=allowed_modules(teacher))
    keys = ("hidden_loss", "attention_loss", "embedding_loss", "similarity_loss", "tail_loss", "bank_loss", "val_cosine",
            "val_cosine_min", "val_nn")  # fmt: skip
    print("chunk  lr        " + " ".join(f"{k:>14}" for k in keys) + "  seconds")
    for row in rows:
        cells = " ".join(f"{row.get(k, float('nan')):>14.4f}" for k in keys)
        print(f"{row['epoch']:>5}  {row['lr']:<9.2e} {cells}  {row['time_s']:>7.0f}")
    done = len(rows)
    print(f"{done}/{args.chunks} chunks ({done * sampler.chunk // 32} steps) in {folder}; this run "
          f"{time.perf_counter() - started:.0f} s; {stopped or 'finished'}")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("prune", "distill", "final", "corpus"))
    parser.add_argument("--out", type=Path, default=CACHE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-docstrings", action="store_true", help="train on the documentation sentences only"
    )
    parser.add_argument(
        "--calib", type=int, default=128, help="calibration sentences for pruning (training part)"
    )
    parser.add_argument("--candidates", default="magnitude,wanda,magnitude+rec,wanda+rec,wanda+rec@0.5:0.4")
    parser.add_argument(
        "--max-params", type=float, default=0.6, help="encoder parameter budget (x the teacher's)"
    )
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--hidden-weight", type=float, default=1.0)
    parser.add_argument("--attention-weight", type=float, default=1.0)
    parser.add_argument("--embedding-weight", type=float, default=1.0)
    parser.add_argument(
        "--similarity-weight", type=float, default=0.0, help="relational loss on the batch's similarity rows"
    )
    parser.add_argument("--similarity-temperature", type=float, default=0.05)
    parser.add_argument(
        "--tail-weight", type=float, default=0.0,
        help="weight of the worst-sentence loss (tail_cosine_loss: gaps 1 - cos weighted towards the largest)",
    )  # fmt: skip
    parser.add_argument("--tail-power", type=float, default=2.0, help="tail weights grow as gap^(power-1)")
    parser.add_argument("--tail-top-k", type=int, default=0, help="only the batch's k hardest sentences (0: all)")
    parser.add_argument(
        "--bank-weight", type=float, default=0.0,
        help="weight of bank_similarity_loss: the error of the similarities to --bank-size teacher embeddings",
    )  # fmt: skip
    parser.add_argument("--bank-size", type=int, default=2048, help="training sentences in the similarity bank")
    parser.add_argument(
        "--neighbour-groups", type=int, default=0,
        help="batches of groups of this many teacher neighbours (NeighbourChunkSampler; 0: length-sorted batches)",
    )  # fmt: skip
    parser.add_argument(
        "--site-sentences", type=int, default=0,
        help="add this many sentences from the installed packages' docstrings / text files (source_sentences)",
    )  # fmt: skip
    parser.add_argument(
        "--start", type=Path, default=None, help="the student to start from (default: <out>/pruned.nc)"
    )
    parser.add_argument(
        "--chunk", type=int, default=640, help="sentences per chunk (one fit epoch, one checkpoint)"
    )
    parser.add_argument(
        "--chunks", type=int, default=60, help="chunks in the whole schedule (cosine over them)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="warm-up chunks")
    parser.add_argument("--dropout", type=float, default=0.0, help="the student's dropout while it distils")
    parser.add_argument("--train-embeddings", action="store_true", help="train the word-embedding table too")
    parser.add_argument("--max-minutes", type=float, default=12.0)
    parser.add_argument("--stop-at", type=int, default=None, help="stop before this chunk (a probe)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--split-layers", default="", help="comma list of Linears (names, re: patterns) to split"
    )
    parser.add_argument("--outlier-channels", type=int, default=16, help="k of the outlier split")
    parser.add_argument("--emb8", action="store_true", help="also the int8-embedding-table row")
    parser.add_argument(
        "--ffn-split", default="", help="K:PATTERNS, as in minilm_int8.py: the session-12 int8 row (FFN split)"
    )
    parser.add_argument(
        "--outlier-scale", default="", help="K:PATTERNS, as in minilm_int8.py (with --ffn-split)"
    )
    parser.add_argument("--json", type=Path, default=None)
    return parser


STAGES = {"prune": stage_prune, "distill": stage_distill, "final": stage_final}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    parts = corpus(seed=args.seed, docstrings=not args.no_docstrings)
    if args.stage == "corpus":
        print({k: len(v) for k, v in parts.items()})
        return 0
    teacher, tokenizer = load_minilm()
    print(
        f"load average {os.getloadavg()[0]:.1f}; sentences { ({k: len(v) for k, v in parts.items()}) }",
        flush=True,
    )
    STAGES[args.stage](args, teacher, tokenizer, parts)
    print(f"load average at the end {os.getloadavg()[0]:.1f} / {os.getloadavg()[2]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
