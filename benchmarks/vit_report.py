"""Reporting for ``benchmarks/vit_pruning.py`` (moved out of it in session 12): ONNX Runtime latency of the
rows, the issue's targets on the ViT, the markdown table."""

from __future__ import annotations

from pathlib import Path

import torch


def ort_latency(rows: list[dict], files: dict[str, Path], threads: int) -> None:
    """ONNX Runtime latency at batch 64, models timed in interleaved rounds (median per model)."""
    from netcompress.evaluation import time_alternating
    from netcompress.export import OrtModel

    models = {name: OrtModel(path, threads=threads) for name, path in files.items()}
    timings = time_alternating(
        models, torch.randn(1, 3, 32, 32), batch_sizes=(64,), rounds=5, threads=threads
    )
    for r in rows:
        if r["name"] in timings:
            r["ort_b64_ms"] = timings[r["name"]]["latency_b64_ms"]


def targets(rows: dict[str, dict], budget: int, headline: str = "kd") -> list[tuple[str, bool]]:
    """The issue's targets on the ViT, each (text, passed): ``headline`` (ce/kd) picks our fine-tune recipe
    (chosen on the validation split), and Torch-Pruning's row with the same recipe is its peer."""
    suffix = ", KD" if headline == "kd" else ""
    ours, reference = rows[f"ours{suffix}"], rows.get("unpruned + fine-tune", rows["unpruned"])
    out = [
        (f"ours at >= 2x fewer MACs ({ours['mac_reduction']:.2f}x)", ours["mac_reduction"] >= 1.995),
        (
            f"ours within 1.5 points of {reference['name']} after the same {budget}-epoch fine-tune "
            f"({100 * ours['accuracy']:.2f} vs {100 * reference['accuracy']:.2f} %)",
            ours["accuracy"] >= reference["accuracy"] - 0.015,
        ),
    ]
    if f"Torch-Pruning{suffix}" in rows:
        tp_row = rows[f"Torch-Pruning{suffix}"]
        out.append((
            f"ours ahead of Torch-Pruning at the same MACs and budget ({100 * ours['accuracy']:.2f} vs "
            f"{100 * tp_row['accuracy']:.2f} %)",
            ours["accuracy"] > tp_row["accuracy"],
        ))  # fmt: skip
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| model | MACs | MACs ratio | params | test accuracy | ORT batch 64 (ms, under load) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        params = f"{r['params']:,}" if r.get("params") else "-"
        ms = f"{r['ort_b64_ms']:.1f}" if r.get("ort_b64_ms") else "-"
        lines.append(
            f"| {r['name']} | {r['macs']:,} | {r['mac_reduction']:.2f}x | {params} | "
            f"{100 * r['accuracy']:.2f} % | {ms} |"
        )
    return "\n".join(lines)
