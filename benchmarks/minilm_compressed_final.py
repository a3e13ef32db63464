"""``minilm_compressed.py final``: the distilled student, dynamic int8 (plain, and with session 12's FFN split +
outlier-only input scaling), exported with int8 kernels; ORT float, ORT ``quantize_dynamic`` (peer) and the student
(float, int8) timed interleaved (``time_alternating``); cosine / agreement on the 512 test sentences."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

import netcompress as nc
from benchmarks.minilm_student import allowed_modules, loader, run_name
from benchmarks.transformers_distill import encoder_params
from netcompress.evaluation.embeddings import compare_embeddings, embed


def stage_final(
    args: argparse.Namespace, teacher: nn.Module, tokenizer: Any, parts: dict[str, list[str]]
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from netcompress.evaluation import time_alternating
    from netcompress.export.onnx import OrtModel, export_onnx, op_counts
    from netcompress.quantization import split_outliers

    test = loader(parts["test"], tokenizer)
    example = next(iter(test))
    reference = embed(teacher, test)
    student = nc.load(args.out / run_name(args) / "student.nc", allow_modules=allowed_modules(teacher))
    pruned = nc.load(args.out / "pruned.nc", allow_modules=allowed_modules(teacher))
    ratio = encoder_params(student) / encoder_params(teacher)
    rows: dict[str, dict[str, Any]] = {
        "PyTorch pruned, before distillation": compare_embeddings(reference, embed(pruned, test)),
        "PyTorch pruned + distilled": compare_embeddings(reference, embed(student, test)),
    }
    int8 = {"int8": True, "tolerance": 0.1}  # minilm_int8.py's INT8_TOLERANCE and its reason
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {"ORT float": folder / "float.onnx", "student float (ORT)": folder / "student.onnx"}
        export_onnx(teacher, files["ORT float"], example)
        quantize_dynamic(str(files["ORT float"]), str(folder / "peer.onnx"), weight_type=QuantType.QInt8)
        files["ORT quantize_dynamic (peer, unpruned)"] = folder / "peer.onnx"
        export_onnx(student, files["student float (ORT)"], example)
        checks = {}
        if args.split_layers:  # int8 with each named Linear's k largest-range input channels in float
            calib = loader(parts["train"][: args.calib], tokenizer)
            layers = args.split_layers.split(",")
            split, info = split_outliers(
                student, calib, layers=layers, channels=args.outlier_channels, num_batches=len(calib)
            )
            label = (
                f"student int8, outlier split k={args.outlier_channels} on {len(info['layers'])} layers (ORT)"
            )
            checks[label] = export_onnx(
                nc.quantize(split, mode="dynamic"), folder / "split.onnx", example, **int8
            )["check"]
            files[label] = folder / "split.onnx"
        if args.ffn_split:  # session 12's int8 path: FFN outlier split (+ outlier-only input scaling)
            checks.update(ffn_split_row(args, student, loader(parts["train"][: args.calib], tokenizer), folder, files))
        for label, emb in (("student int8 (ORT)", "float"), ("student int8 + int8 tables (ORT)", "int8")):
            if emb == "int8" and not args.emb8:
                continue
            path = folder / f"student_int8_{emb}.onnx"
            kw = {"embeddings": "int8"} if emb == "int8" else {}
            checks[label] = export_onnx(nc.quantize(student, mode="dynamic", **kw), path, example, **int8)[
                "check"
            ]
            files[label] = path
        runners = {name: OrtModel(path, threads=args.threads) for name, path in files.items()}
        for name, runner in runners.items():
            rows[name] = {
                **compare_embeddings(reference, embed(runner, test)),
                "bytes": files[name].stat().st_size,
            }
            rows[name]["int_ops"] = {
                k: v for k, v in op_counts(files[name]).items() if "Integer" in k or "Quant" in k
            }
        load_before = os.getloadavg()
        timing = time_alternating(
            runners, example, batch_sizes=(32,), rounds=args.rounds, threads=args.threads
        )
        load_after = os.getloadavg()
    base = timing["ORT float"]["latency_b32_ms"]
    for name, t in timing.items():
        rows[name].update(
            ms=t["latency_b32_ms"], spread=t["latency_b32_spread"], speedup=base / t["latency_b32_ms"]
        )
    print(f"all-MiniLM-L6-v2, {len(parts['test'])} test sentences, batch 32, length 64, {args.threads} threads, "
          f"{args.rounds} interleaved rounds; student {run_name(args)}: encoder params {ratio:.3f}x; machine "
          f"{platform.machine()} {os.cpu_count()} cores, load average {load_before[0]:.1f} / {load_before[2]:.1f} "
          f"before timing, {load_after[0]:.1f} / {load_after[2]:.1f} after")  # fmt: skip
    print(
        "\n| model | ms / batch | speed-up vs ORT float | spread | bytes | cosine mean | cosine min | NN agreement |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        ms = (
            f"{r['ms']:.1f} | {r['speedup']:.2f}x | {r['spread']:.2f} | {r['bytes']:,}"
            if "ms" in r
            else " | | | "
        )
        print(f"| {name} | {ms} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['nn_agreement']:.1%} |")
    print(f"export checks: { {k: round(v['max_rel_diff'], 4) for k, v in checks.items()} }")
    print(f"integer kernels: { {k: r['int_ops'] for k, r in rows.items() if r.get('int_ops')} }")
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "encoder_params_ratio": ratio, "run": run_name(args)}, indent=1)
        )


def ffn_split_row(
    args: argparse.Namespace, student: nn.Module, calib: DataLoader, folder: Path, files: dict[str, Path]
) -> dict[str, Any]:
    """The student with ``minilm_int8.py``'s session-12 int8 path: ``smooth_inputs(outliers=K)`` on the
    ``--outlier-scale`` Linears, then ``split_ffn_outliers`` on the ``--ffn-split`` down-projections; dynamic
    int8, exported with int8 kernels into ``files``. Returns {row: export check}."""
    from netcompress.export.onnx import export_onnx
    from netcompress.quantization.ffn_split import split_ffn_outliers
    from netcompress.quantization.input_smoothing import smooth_inputs

    work, label = student, ""
    if args.outlier_scale:
        k_scale, patterns = args.outlier_scale.split(":", 1)
        work, sinfo = smooth_inputs(
            student, calib, layers=patterns.split(","), outliers=int(k_scale), num_batches=len(calib)
        )
        label = f", {k_scale} outlier channels scaled on {len(sinfo['folded']) + len(sinfo['scaled'])} Linears"
    k_ffn, patterns = args.ffn_split.split(":", 1)
    work, finfo = split_ffn_outliers(
        work, calib, layers=patterns.split(","), channels=int(k_ffn), num_batches=len(calib)
    )
    row = f"student int8, FFN split k={k_ffn} on {len(finfo['layers'])} FFNs{label} (ORT)"
    path = folder / "student_ffn_split.onnx"
    check = export_onnx(nc.quantize(work, mode="dynamic"), path, next(iter(calib)), int8=True, tolerance=0.1)
    files[row] = path
    return {row: check["check"]}
