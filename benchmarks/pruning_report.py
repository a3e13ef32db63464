"""The pruning benchmark's report: the RESULTS.md section, its tables and the issue's target checks.

Split out of ``pruning.py`` (which re-exports these names: ``pr.table``, ``pr.target_checks``, ...).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import cifar_protocol as cp
from pruning_latency import LATENCY_ROWS, latency_checks
from pruning_methods import PruningBenchConfig

from netcompress.core import atomic_write_text

SECTION = "## Pruning (CIFAR-10 CPU protocol)"
# PruningBenchConfig fields that change only how the models are timed, not the cached rows

DEPLOY_FORMS = ("folded", "ort")
DEPLOY_LABELS = {"folded": "BN folded", "ort": "ONNX Runtime"}


COLUMNS: list[cp.Column] = [
    ("method", "label", cp.fmt_text),
    ("acc before FT %", "acc_before", cp.fmt_percent),
    ("acc after FT %", "acc_after", cp.fmt_percent),
    ("seeds: mean ± sd %", "acc_seeds_text", cp.fmt_text),
    ("params", "params", cp.fmt_number()),
    ("non-zero", "nonzero_params", cp.fmt_number()),
    ("MMACs", "mmacs", cp.fmt_number(2)),
    ("MAC red. x", "mac_reduction", cp.fmt_number(2)),
    ("dense file KB", "size_kb", cp.fmt_number(1)),
    (".ncz file KB", "sparse_kb", cp.fmt_number(1)),
    ("b1 ms", "latency_ms", cp.fmt_number(3)),
    ("b1 speed-up", "speedup_b1", cp.fmt_number(2)),
    ("b64 ms", "latency_b64_ms", cp.fmt_number(1)),
    ("b64 speed-up", "speedup_b64", cp.fmt_number(2)),
]


DEPLOY_COLUMNS: list[cp.Column] = [
    ("method", "label", cp.fmt_text),
    ("MAC red. x", "mac_reduction", cp.fmt_number(2)),
    ("eager b64 ms", "latency_b64_ms", cp.fmt_number(1)),
    ("eager speed-up", "speedup_b64", cp.fmt_number(2)),
    *[
        column
        for form in DEPLOY_FORMS
        for column in (
            (f"{DEPLOY_LABELS[form]} b64 ms", f"{form}_b64_ms", cp.fmt_number(1)),
            (f"{DEPLOY_LABELS[form]} speed-up", f"{form}_speedup_b64", cp.fmt_number(2)),
        )
    ],
]


def accuracy(row: dict[str, Any]) -> float:
    """The row's accuracy after fine-tuning: the mean over its seeds when it has several."""
    seeds = row.get("acc_seeds") or [row["acc_after"]]
    return sum(seeds) / len(seeds)


def seeds_text(row: dict[str, Any]) -> str | None:
    seeds = row.get("acc_seeds")
    if not seeds:
        return None
    mean = sum(seeds) / len(seeds)
    sd = (sum((a - mean) ** 2 for a in seeds) / max(len(seeds) - 1, 1)) ** 0.5
    return f"{100 * mean:.2f} ± {100 * sd:.2f} (n={len(seeds)})"


def table(rows: list[dict[str, Any]]) -> str:
    view = [
        {**r, "mmacs": r["macs"] / 1e6, "size_kb": r["size_bytes"] / 1e3,
         "sparse_kb": None if r.get("sparse_size_bytes") is None else r["sparse_size_bytes"] / 1e3,
         "acc_seeds_text": seeds_text(r)}
        for r in rows
    ]  # fmt: skip
    return cp.markdown_table(view, COLUMNS)


def target_checks(rows: list[dict[str, Any]], config: PruningBenchConfig) -> list[str]:
    """The issue's targets, checked on the measured rows (one line each, PASS/MISS with numbers).

    Accuracy is the mean over a row's seeds where it has several (``accuracy``)."""
    by = {r["method"]: r for r in rows}
    lines = []
    # every structured netcompress row; peers include Torch-Pruning given our BN recalibration (the stronger)
    # the latency mode's rows have their own checks (latency_checks), not the MAC budget's
    mac_rows = [r for r in rows if r["method"] not in LATENCY_ROWS]
    ours = [r for r in mac_rows if r["method"].startswith("nc_") and r["method"] != "nc_unstructured"]
    peers = [r for r in mac_rows if r["method"].startswith("tp_")]
    if ours:
        best = max(ours, key=accuracy)
        if peers:
            peer = max(peers, key=accuracy)
            gap = 100 * (accuracy(best) - accuracy(peer))
            lines.append(f"best netcompress structured ({best['method']}) vs best Torch-Pruning ({peer['method']}): "
                         f"{gap:+.2f} points (target >= +2): {'PASS' if gap >= 2 else 'MISS'}")  # fmt: skip
        references = [("unpruned baseline", by["unpruned"])]
        if "dense_finetune" in by:
            references.append(("dense_finetune", by["dense_finetune"]))
        for name, reference in references:
            drop = 100 * (accuracy(reference) - accuracy(best))
            lines.append(f"{best['method']} vs {name}: {drop:.2f} points lower (target <= 1): "
                         f"{'PASS' if drop <= 1 else 'MISS'}")  # fmt: skip
        for r in ours:
            need = 0.7 * r["mac_reduction"]
            forms = [("eager", r["speedup_b64"])] + [
                (DEPLOY_LABELS[f], r[f"{f}_speedup_b64"]) for f in DEPLOY_FORMS if f"{f}_speedup_b64" in r
            ]
            verdicts = ", ".join(f"{label} {x:.2f}x {'PASS' if x >= need else 'MISS'}" for label, x in forms)
            lines.append(
                f"{r['method']} batch-64 speed-up vs 0.7 x {r['mac_reduction']:.2f} = {need:.2f}x: {verdicts}"
            )
    lines += latency_checks(rows, config.latency_reduction, accuracy, high=config.high_mac_reduction)
    for r in rows:
        if r.get("sparse_ratio") is not None:
            lines.append(f"{r['method']} .ncz file = {r['sparse_ratio']:.1%} of the dense unpruned file "
                         f"(target <= 25%): {'PASS' if r['sparse_ratio'] <= 0.25 else 'MISS'}")  # fmt: skip
    return lines


def report(
    argv: list[str] | None, protocol: cp.ProtocolConfig, config: PruningBenchConfig, bundle: Any,
    sections: list[str], *, seconds: float,
) -> str:  # fmt: skip
    """The Markdown body of the RESULTS.md section: command, machine, protocol, one table per model."""
    machine = cp.machine_description()
    command = "python benchmarks/pruning.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lrs = ", ".join(f"{name} lr {cp.model_spec(name)['lr']}" for name in cp.PROTOCOL_MODELS)
    return "\n\n".join([
        f"Command: `{command.strip()}` ({time.strftime('%Y-%m-%d')}), {seconds:.0f} s of wall time "
        "(baselines loaded from the cache if present).",
        cp.describe_machine(machine, timing_threads=config.timing_threads),
        f"Protocol `{protocol.name}`: CIFAR-10, {len(bundle.train)} training images, {len(bundle.test)} test "
        f"images; baselines {protocol.epochs} epochs SGD+cosine "
        f"({lrs}), wd 5e-4, {protocol.train_threads} torch threads, "
        f"batch {protocol.batch_size}. Every method then gets {config.finetune_epochs} epochs at lr "
        f"{config.finetune_lr} (cosine) in total. Settings: `{json.dumps(config.to_dict())}`.",
        *sections,
    ])  # fmt: skip


def write_outputs(
    body: str,
    rows: list[dict[str, Any]],
    protocol: cp.ProtocolConfig,
    *,
    write_results: bool,
    heldout: bool = False,
) -> None:
    out_dir = cp.CACHE_DIR / "pruning" / (protocol.name + ("-heldout" if heldout else ""))
    atomic_write_text(out_dir / "results.md", body + "\n")
    payload = {"machine": cp.machine_description(), "rows": rows}
    atomic_write_text(out_dir / "results.json", json.dumps(payload, indent=1) + "\n")
    if write_results:
        cp.write_results_section(SECTION, body + kept_reading())


def kept_reading(path: Path = cp.RESULTS_PATH) -> str:
    """The hand-written ``### Reading`` part of the current section, kept when the tables are rewritten."""
    text = path.read_text() if path.exists() else ""
    match = re.search(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    reading = match and re.search(r"^### Reading\n.*", match.group(0), re.DOTALL | re.MULTILINE)
    return "\n\n" + reading.group(0).strip() if reading else ""
