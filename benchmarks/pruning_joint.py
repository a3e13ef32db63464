"""prune_to_target(target="latency", quantize=None | "joint" | "int8") on the narrow VGG baseline, ORT batch 64.

The same 2.5x lower measured ONNX Runtime batch-64 latency asked three ways: widths only (float file), widths
and int8/float per layer (``"joint"``), widths with every layer int8. Proxy batches: 512 held-out training
images; calibration: the training loader; no fine-tuning or BN recalibration (accuracy straight after the
search, on the test set). The float cost table is shared with ``pruning.py --latency-mode`` when its cache
folder is given.

    python benchmarks/pruning_joint.py --baseline-epochs 2 --cache-dir benchmarks/.cache/cost_tables
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402

from netcompress.evaluation import evaluate  # noqa: E402
from netcompress.pruning import prune_to_target  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-epochs", type=int, default=None)
    parser.add_argument("--reduction", type=float, default=2.5)
    parser.add_argument("--cache-dir", default=str(cp.CACHE_DIR / "cost_tables"))
    parser.add_argument(
        "--modes", nargs="+", default=["none", "joint", "int8"], choices=["none", "joint", "int8"]
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    protocol = cp.protocol_from_flags(quick=False, full=False)
    if args.baseline_epochs is not None:
        protocol = dataclasses.replace(protocol, epochs=args.baseline_epochs)
    bundle = cp.load_data(protocol)
    base, _ = cp.train_baseline("narrow_vgg", protocol=protocol, bundle=bundle)
    train, test = cp.loaders(bundle, protocol)
    x, val = cp.example_input(bundle), cp.heldout_loader(protocol, size=512)
    rows = {"unpruned_accuracy": evaluate(base, test)["accuracy"]}
    for mode in args.modes:
        started = time.perf_counter()
        small, s = prune_to_target(
            base, x, target="latency", reduction=args.reduction, runtime="onnxruntime", batch_size=64,
            importance="group_l2", round_to="auto", quantize=None if mode == "none" else mode, loader=val,
            calib_loader=train, timing_rounds=3, cache_dir=args.cache_dir,
        )  # fmt: skip
        plan = s.get("precision", {})
        rows[mode] = {
            "met": s["met"], "reason": s["reason"], "achieved": s["achieved_reduction"],
            "ms": [s["target_before"], s["target_after"]], "accuracy": evaluate(small, test)["accuracy"],
            "rounds": len(s["candidates"]), "widths": s["candidates"][s["chosen_round"] - 1]["widths"],
            "by_form": s["by_form"], "int8": plan.get("int8"), "float": plan.get("float"),
            "reasons": plan.get("reasons"), "seconds": round(time.perf_counter() - started, 1),
        }  # fmt: skip
        print(mode, json.dumps(rows[mode]), flush=True)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
