"""Re-time cached latency rows of ``pruning.py --latency-mode`` as the searches check a candidate: per-round ratios.

``pruning.py`` times every row's ORT file in interleaved rounds and divides the unpruned model's aggregate by each
row's; under load the two aggregates drift apart (session 16: the unpruned model's own fine-tuned copy,
``dense_finetune``, same architecture, timed 1.24x "faster" than the unpruned model at a load of 3). Here every
cached row is timed with :func:`netcompress.pruning.latency_confirm.retime`: all rows and the unpruned FLOAT model in
the same ``--rounds`` interleaved rounds, each round's ratio unpruned / row, the MEDIAN ratio reported with its
spread ((max - min) / median) and range. An int8 row (fake-quantized model) is timed as its int8 ORT file.
Nothing is trained: rows missing from the work folder are an error naming them.

    python benchmarks/pruning_retime.py --models narrow_vgg --rounds 21 \
        --methods dense_finetune nc_int8_only nc_latency_joint nc_latency_fill tp_magnitude_at_latency_median
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402
from pruning import rows_cache_key  # noqa: E402
from pruning_methods import PruningBenchConfig  # noqa: E402

from netcompress.core.io import load_checkpoint  # noqa: E402
from netcompress.pruning.latency_confirm import retime  # noqa: E402
from netcompress.pruning.latency_table import MeasureSpec  # noqa: E402


def retime_table(timed: dict[str, dict[str, Any]]) -> str:
    """Markdown: one line per row, median per-round ratio, spread, range, and the milliseconds behind them."""
    lines = ["| row | median ratio (unpruned float ORT / row) | spread | min - max | unpruned ms | row ms |",
             "| --- | ---: | ---: | --- | ---: | ---: |"]  # fmt: skip
    for name, t in timed.items():
        lines.append(f"| {name} | {t['ratio']:.2f} | {t['spread']:.2f} | {min(t['ratios']):.2f} - {max(t['ratios']):.2f} "
                     f"| {t['unpruned']:.1f} | {t['candidate']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def work_dir(
    model_name: str, protocol: cp.ProtocolConfig, config: PruningBenchConfig, settings: dict
) -> Path:
    return (
        cp.CACHE_DIR
        / "pruning"
        / protocol.name
        / f"{model_name}-{rows_cache_key(config, settings, heldout=False)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["narrow_vgg"], choices=list(cp.PROTOCOL_MODELS))
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    protocol = cp.protocol_from_flags(quick=False, full=False)
    bundle = cp.load_data(protocol)
    spec = MeasureSpec(target="latency", runtime="onnxruntime", batch_size=64, threads=args.threads)
    for model_name in args.models:
        base, info = cp.train_baseline(model_name, protocol=protocol, bundle=bundle)
        folder = work_dir(model_name, protocol, PruningBenchConfig(), info["settings"])
        missing = [m for m in args.methods if not (folder / f"{m}.pt").exists()]
        if missing:
            raise SystemExit(
                f"{model_name}: no cached row for {', '.join(missing)} in {folder} (run pruning.py first)"
            )
        models = {m: load_checkpoint(folder / f"{m}.pt")["model"].eval() for m in args.methods}
        with open("/proc/loadavg") as f:
            before = f.read().split()[:3]
        started = time.perf_counter()
        timed = retime(base.eval(), models, cp.example_input(bundle), spec, args.rounds)
        with open("/proc/loadavg") as f:
            after = f.read().split()[:3]
        unpruned = statistics.median(t["unpruned"] for t in timed.values())
        print(f"### {model_name}: {args.rounds} interleaved rounds, {time.perf_counter() - started:.0f} s, load "
              f"{' / '.join(before)} before, {' / '.join(after)} after; unpruned float ORT {unpruned:.1f} ms\n")  # fmt: skip
        print(retime_table(timed), flush=True)
        print({name: t["ratios"] for name, t in timed.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
