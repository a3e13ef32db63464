"""Sweep public model classes nobody here wrote through netcompress's public verbs; print a matrix.

Each model (``benchmarks/zoo_sweep_models.py``: tiny random-weight ``transformers`` configs and
``efficientnet_pytorch`` widths, no downloads) goes through every verb of its kind; each cell is

- ``ok``      the verb ran and its result passed the sweep's own check,
- ``refused`` a NetcompressError with a one-line message (acceptable: the user is told what and why),
- ``WRONG``   the verb returned but the result is wrong (pruned != masked, export outside tolerance,
              save/load changed outputs, no integer kernel, sparsity not as asked, non-finite loss),
- ``CRASH``   any other exception (a bug),
- ``TIMEOUT`` over ``--verb-seconds``.

Checks are independent of the library's own where that is cheap: channel pruning is compared with the
original whose consumers ignore the removed channels (forward pre-hooks zero them); transformer pruning
relies on its built-in masked-model verification (a mismatch there is an UnsupportedModelError).

Usage (from the repository root)::

    PYTHONPATH=$PWD nice -n 10 python benchmarks/zoo_sweep.py --out benchmarks/zoo_sweep.jsonl
    PYTHONPATH=$PWD python benchmarks/zoo_sweep.py --only swin,llama --verbs quant_int8,export_float
    PYTHONPATH=$PWD python benchmarks/zoo_sweep.py --round 4 --only lstm_bi_2l,detr   # zoo_sweep_models3
    PYTHONPATH=$PWD python benchmarks/zoo_sweep.py --round 4 --verb-set dynamic   # zoo_sweep_verbs_dynamic
    PYTHONPATH=$PWD python benchmarks/zoo_sweep.py --round 5 --verb-set compress   # zoo_sweep_models4 (PyPI zoo)
    PYTHONPATH=$PWD python benchmarks/zoo_sweep.py --round 6 --only pcv_ghostnet   # zoo_sweep_models5 (pytorchcv ...)
    PYTHONPATH=$PWD python benchmarks/zoo_sweep.py --round 7 --only peft_lora_bert   # zoo_sweep_models6 (peft ...)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_sweep_models import IMAGE_SIZE, LABELS, TEXT, VISION, text_inputs  # noqa: E402
from zoo_sweep_models2 import IMAGE_SIZE2, OTHER, TEXT2, VISION2  # noqa: E402
from zoo_sweep_models3 import ROUND4  # noqa: E402
from zoo_sweep_models4 import ROUND5, SKIPPED  # noqa: E402
from zoo_sweep_models5 import ROUND6  # noqa: E402
from zoo_sweep_models5 import SKIPPED as SKIPPED6  # noqa: E402
from zoo_sweep_models6 import ROUND7  # noqa: E402
from zoo_sweep_models6 import SKIPPED as SKIPPED7  # noqa: E402
from zoo_sweep_verbs import ALL_VERBS, TEXT_VERBS, VISION_VERBS, Wrong, _out  # noqa: E402
from zoo_sweep_verbs_dynamic import DYNAMIC_VERBS  # noqa: E402

VERB_SETS = {"dynamic": DYNAMIC_VERBS}  # --verb-set: one table for every kind of model

from netcompress.core.errors import NetcompressError  # noqa: E402


class _Timeout(Exception):
    pass



def _run_verb(fn: Callable, model: nn.Module, x: Any, ctx: dict, seconds: int) -> tuple[str, str, float]:
    def alarm(*_: Any) -> None:
        raise _Timeout

    start = time.perf_counter()
    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    sys.stdout.flush()
    saved = os.dup(1), os.dup(2)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)  # the exporters print whole graphs on failure; the cell's detail says what failed
    os.dup2(quiet, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detail = fn(model, x, ctx)
        status = "ok"
    except _Timeout:
        status, detail = "TIMEOUT", f"over {seconds} s"
    except Wrong as exc:
        status, detail = "WRONG", str(exc)
    except NetcompressError as exc:
        status, detail = "refused", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - every other failure is a bug to classify
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        status = "CRASH"
        detail = f"{type(exc).__name__}: {exc} [{Path(frame.filename).name}:{frame.lineno}]"
    finally:
        signal.alarm(0)
        sys.stdout.flush()
        for fd, copy_ in zip((1, 2), saved, strict=True):
            os.dup2(copy_, fd)
            os.close(copy_)
        os.close(quiet)
    return status, " ".join(str(detail).split())[:400], time.perf_counter() - start


def sweep_model(
    name: str, kind: str, verbs: list[str], seconds: int, verb_set: dict | None = None
) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    other = text_inputs(3, 11, seed=5)
    if kind in ("r4", "r5", "r6", "r7"):  # rounds 4-7: any inputs, every verb
        build, make, labelled, family = {**ROUND4, **ROUND5, **ROUND6, **ROUND7}[name]
        table, x, other = ALL_VERBS, make(2, False, 0), make(3, True, 5)
        labels = [torch.randint(0, LABELS, (4,), generator=gen) for _ in range(2)]
        # unlabelled several positional inputs: a 1-tuple (a 2-tuple batch reads as (inputs, targets))
        batches = [(make(4, False, s), y) if labelled else (make(4, False, s),) for s, y in zip((1, 2), labels)]
        verbs = [v for v in verbs if not (v == "prune_hidden" and family == "cnn")]
    elif kind == "other":  # waveforms, spectrograms, (source, target): the transformer verbs
        build, make, labelled = OTHER[name]
        family, table, x, other = "transformer", TEXT_VERBS, make(2, False, 0), make(3, True, 5)
        labels = [torch.randint(0, LABELS, (4,), generator=gen) for _ in range(2)]
        batches = [(make(4, False, s), y) if labelled else make(4, False, s) for s, y in zip((1, 2), labels)]
    elif kind == "vision":
        build, family = {**VISION, **VISION2}[name]
        hw = {**IMAGE_SIZE, **IMAGE_SIZE2}.get(name, (32, 32))
        x = torch.randn(2, 3, *hw, generator=gen)
        batches = [(torch.randn(4, 3, *hw, generator=gen), torch.randint(0, LABELS, (4,), generator=gen))]
        table = VISION_VERBS
    else:
        build, family, table = {**TEXT, **TEXT2}[name], "transformer", TEXT_VERBS
        x = text_inputs(2, 9, seed=0)
        batches = [(text_inputs(4, 9, seed=s), torch.randint(0, 3, (4,), generator=gen)) for s in (1, 2)]
    table = verb_set or table  # --verb-set NAME: every model runs zoo_sweep_verbs_NAME.VERBS
    model = build().eval()
    if kind in ("vision", "text") and _out(model, x).dim() == 3:  # token outputs (LM logits, states): unlabelled batches
        batches = [b[0] for b in batches]
    for m in model.modules():  # trained-like BN statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.3, 0.3, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = {"tmp": Path(tmp), "calib": batches, "train": batches, "family": family, "other": other}
        for verb in verbs:
            if verb not in table:
                continue
            status, detail, secs = _run_verb(table[verb], model, x, ctx, seconds)
            rows.append({"model": name, "kind": kind, "class": type(model).__name__, "verb": verb,
                         "status": status, "detail": detail, "seconds": round(secs, 2)})  # fmt: skip
            print(f"  {name:22s} {verb:13s} {status:8s} {secs:6.1f}s  {detail[:300]}", flush=True)
    return rows


def print_matrix(rows: list[dict[str, Any]], verb_set: dict | None = None) -> None:
    short = {"ok": "ok", "refused": "ref", "WRONG": "WRONG", "CRASH": "CRASH", "TIMEOUT": "TIME"}
    tables = (("vision", VISION_VERBS), ("text", TEXT_VERBS), ("other", TEXT_VERBS), ("r4", ALL_VERBS), ("r5", ALL_VERBS),
              ("r6", ALL_VERBS), ("r7", ALL_VERBS))
    for kind, verbs in ((k, verb_set or v) for k, v in tables):
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        print(f"\n| {kind} | " + " | ".join(verbs) + " |")
        print("|---|" + "---|" * len(verbs))
        for model in dict.fromkeys(r["model"] for r in mine):
            cells = {r["verb"]: short[r["status"]] for r in mine if r["model"] == model}
            print(f"| {model} | " + " | ".join(cells.get(v, "-") for v in verbs) + " |")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print("\ncells:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated model names (default: all)")
    p.add_argument("--kinds", default="vision,text,other", help="round 4's models are of kind r4")
    p.add_argument("--round", choices=("all", "1", "3", "4", "5", "6", "7"), default="all",
                   help="1: zoo_sweep_models, 3: ...2, 4: ...3, 5: ...4, 6: ...5, 7: ...6 (all: rounds 1 and 3)")
    p.add_argument("--verbs", default="", help="comma-separated verbs (default: all of each kind)")
    p.add_argument("--verb-set", default="", help="NAME: the verbs of zoo_sweep_verbs_NAME.py (compress, ...)")
    p.add_argument("--verb-seconds", type=int, default=120)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="append one JSON line per cell here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    only = {n for n in args.only.split(",") if n}
    verb_set = importlib.import_module(f"zoo_sweep_verbs_{args.verb_set}").VERBS if args.verb_set else None
    rows: list[dict[str, Any]] = []
    start = time.time()
    kinds = {"4": "r4", "5": "r5", "6": "r6", "7": "r7"}.get(args.round, args.kinds)
    skipped = {"5": SKIPPED, "6": SKIPPED6, "7": SKIPPED7}.get(args.round)
    if skipped:
        print(f"round {args.round} skips packages not installed:", ", ".join(skipped))
    for kind in kinds.split(","):
        names = {"vision": [*VISION, *VISION2], "text": [*TEXT, *TEXT2], "other": [*OTHER], "r4": [*ROUND4],
                 "r5": [*ROUND5], "r6": [*ROUND6], "r7": [*ROUND7]}[kind]
        if args.round in ("1", "3"):
            names = [n for n in names if (n in VISION2 or n in TEXT2 or n in OTHER) == (args.round == "3")]
        table = verb_set or {"vision": VISION_VERBS, "r4": ALL_VERBS, "r5": ALL_VERBS, "r6": ALL_VERBS,
                             "r7": ALL_VERBS}.get(kind, TEXT_VERBS)
        verbs = [v for v in args.verbs.split(",") if v] or list(table)
        for name in names:
            if only and name not in only:
                continue
            rows += sweep_model(name, kind, verbs, args.verb_seconds, verb_set)
    print_matrix(rows, verb_set)
    print(f"wall {time.time() - start:.0f} s")
    if args.out:
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
