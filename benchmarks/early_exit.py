"""Early exit on ResNet-20 (CIFAR-10, CPU protocol): accuracy, average MACs and measured batch latency per threshold.

The protocol baseline (``cifar_protocol.train_baseline``, cached) gets exit heads after ``--exits``
(default ``layer1`` and ``layer2``), trained with the backbone frozen (``--head-epochs``). The
thresholds are then chosen on a held-out VALIDATION split (training images outside the protocol
subset): one for each accuracy bound (``--drops``, drop vs the final exit) and each MAC budget
(``--mac-fractions``), beside a fixed grid (``--thresholds``). Every row reports test accuracy,
per-exit shares, average MACs per sample and the measured wall clock per batch of ``--batch``
real test images (different images per batch, so samples leave at different exits), against the
unmodified model, all timed interleaved round by round on ``--threads`` torch threads with the heap
kept warm.

    python benchmarks/early_exit.py --quick            # smoke run, under two minutes
    python benchmarks/early_exit.py                    # CPU protocol (trains the cached baseline once)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402

from netcompress.dynamic import (  # noqa: E402
    add_early_exits,
    calibrate_early_exit,
    evaluate_early_exit,
    train_early_exit,
)
from netcompress.evaluation import count_macs, keep_heap_warm, torch_threads  # noqa: E402
from netcompress.training import TrainConfig  # noqa: E402


def time_batches(models: dict[str, Any], batches: list[torch.Tensor], *, rounds: int) -> dict[str, float]:
    """Median ms per batch of each model: every round runs each model over every batch, in rotated order."""
    keep_heap_warm()
    names = list(models)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for name in names:  # warm-up
            models[name](batches[0])
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                started = time.perf_counter()
                for batch in batches:
                    models[name](batch)
                per_round[name].append((time.perf_counter() - started) * 1000 / len(batches))
    return {n: statistics.median(v) for n, v in per_round.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--exits", nargs="+", default=["layer1", "layer2"])
    parser.add_argument("--head-epochs", type=int, default=None, help="default: 1 quick, 5 otherwise")
    parser.add_argument("--drops", type=float, nargs="+", default=[0.0, 0.01, 0.02])
    parser.add_argument("--mac-fractions", type=float, nargs="+", default=[0.5])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.9, 0.99])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="real test batches timed per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    protocol = cp.protocol_from_flags(quick=args.quick, full=False)
    bundle = cp.load_data(protocol)
    model, info = cp.train_baseline("resnet20", protocol=protocol, bundle=bundle)
    val = cp.heldout_loader(protocol, size=1000 if args.quick else 5000)
    train, test = cp.loaders(bundle, protocol)
    example = cp.example_input(bundle)
    torch.manual_seed(0)
    ee = add_early_exits(model, exits=args.exits, example_inputs=example)
    epochs = args.head_epochs if args.head_epochs is not None else (1 if args.quick else 5)
    started = time.perf_counter()
    train_early_exit(
        ee, train, config=TrainConfig(epochs=epochs, lr=0.05, progress=False, seed=0), freeze_backbone=True
    )
    head_time = time.perf_counter() - started
    ee.eval()
    chosen: dict[str, float] = {}
    for drop in args.drops:
        chosen[f"val drop <= {drop:g}"] = calibrate_early_exit(ee, val, max_accuracy_drop=drop, apply=False)[
            "threshold"
        ]
    for fraction in args.mac_fractions:
        chosen[f"val MACs <= {fraction:g}x"] = calibrate_early_exit(
            ee, val, max_macs_fraction=fraction, apply=False
        )["threshold"]
    for t in args.thresholds:
        chosen[f"fixed {t:g}"] = t
    rows = evaluate_early_exit(ee, test, thresholds=list(chosen.values()), example_inputs=example)
    full_macs = count_macs(model, example)[0]
    images = torch.stack([bundle.test[i][0] for i in range(args.batch * args.batches)])
    batches = list(images.split(args.batch))
    runners: dict[str, Any] = {"full model": model.eval()}
    for name, t in chosen.items():
        runner = add_early_exits(model, exits=args.exits, example_inputs=example)
        runner.load_state_dict(ee.state_dict())
        runners[name] = runner.set_policy(threshold=t).eval()
    with torch_threads(args.threads):
        ms = time_batches(runners, batches, rounds=args.rounds)
    base_acc = rows[0]["exit_accuracies"][-1]
    table = []
    for (name, t), row in zip(chosen.items(), rows):
        table.append(
            {
                "rule": name,
                "threshold": round(t, 4),
                "test_acc": round(row["accuracy"], 4),
                "drop_pts": round(100 * (base_acc - row["accuracy"]), 2),
                "exit_shares": [round(s, 3) for s in row["exit_shares"]],
                "avg_macs_M": round(row["expected_macs"] / 1e6, 2),
                "macs_x": round(full_macs / row["expected_macs"], 2),
                "ms_per_batch": round(ms[name], 1),
                "latency_x": round(ms["full model"] / ms[name], 2),
            }
        )
    print(f"protocol {protocol.name}; baseline test acc {base_acc:.4f}; full {full_macs / 1e6:.2f} MMACs, "
          f"{ms['full model']:.1f} ms per batch of {args.batch} ({args.threads} thread); head training "
          f"{head_time:.0f} s; exit accuracies {[round(a, 4) for a in rows[0]['exit_accuracies']]}")  # fmt: skip
    for row in table:
        print(json.dumps(row))
    if args.json is not None:
        args.json.write_text(json.dumps({"full_ms": ms["full model"], "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
