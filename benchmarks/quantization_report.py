"""The report of benchmarks/quantization.py: notes per row, the issue's targets with PASS/FAIL, the tables and
the RESULTS.md section.

Imported by benchmarks/quantization.py (which re-exports every name here); not a script of its own.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

try:
    from benchmarks import cifar_protocol as cp
except ModuleNotFoundError:  # run as `python benchmarks/quantization.py`: its folder is on sys.path
    import cifar_protocol as cp

if TYPE_CHECKING:  # the script's own config, for annotations only (the script imports this module)
    from quantization import QuantBenchConfig


def notes_of(row: dict[str, Any]) -> str:
    """The short remark column: what each netcompress row is, in numbers."""
    parts = []
    if "qat" in row:
        qat = row["qat"]
        ends = ", first/last layer 8-bit" if qat["eight_bit_layers"] else ""
        parts.append(f"{qat['method'].upper()} {qat['epochs']} epochs lr {qat['lr']}{ends}")
    if "bits" in row:
        counts: dict[int, int] = {}
        for b in row["bits"].values():
            counts[b] = counts.get(b, 0) + 1
        layout = ", ".join(f"{n}x{b}-bit" for b, n in sorted(counts.items()))
        parts.append(f"{layout}; budget {row['budget_bytes']:,} B")
    if "act_observer" in row:
        parts.append(f"activation observer {row['act_observer']}")
    if "fake_quant_accuracy" in row:
        parts.append(f"PyTorch fake-quant acc {100 * row['fake_quant_accuracy']:.2f}")
    return "; ".join(parts)


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for one model, each with the measured value and pass/fail.

    Example:
        >>> [c["target"] for c in check_targets(result)][0]
        'W8A8 PTQ accuracy within 0.3 points of float'
    """
    rows = {r["method"]: r for r in result["rows"]}
    base = rows["float (PyTorch)"]
    w8 = rows["netcompress W8A8 PTQ"]
    checks: list[dict[str, Any]] = []

    def add(target: str, measured: str, ok: bool) -> None:
        checks.append({"model": result["model"], "target": target, "measured": measured, "ok": bool(ok)})

    drop = 100 * (base["accuracy"] - w8["accuracy"])
    add("W8A8 PTQ accuracy within 0.3 points of float", f"{drop:+.2f} points", drop <= 0.3)
    qat = rows["netcompress W4A8 QAT"]
    qat_drop = 100 * (base["accuracy"] - qat["accuracy"])
    add("W4A8 QAT accuracy within 1 point of float", f"{qat_drop:+.2f} points", qat_drop <= 1.0)
    add(
        "int8 >= 3x faster than PyTorch float at batch 64",
        f"{w8['speedup_b64']:.2f}x",
        w8["speedup_b64"] >= 3,
    )
    peer = rows.get("ORT quantize_static (QDQ)")
    if peer is not None:
        for key, batch in (("latency_ms", 1), ("latency_b64_ms", 64)):
            ratio = peer[key] / w8[key]
            # both files run the same ORT int8 kernels: a ratio within 5% of 1 is timing noise
            add(
                f"int8 no slower than ORT quantize_static at batch {batch} (5% timing tolerance)",
                f"{ratio:.3f}x of its speed",
                ratio >= 0.95,
            )
    if result["model"] == "mobilenet_student":
        for label in ("netcompress W8A8 PTQ", "ORT quantize_static (QDQ)"):
            row = rows.get(label)
            if row is None:
                continue
            d = 100 * (base["accuracy"] - row["accuracy"])
            add(
                f"depthwise student, {label}: agreement >= 98% and accuracy within 0.5 points",
                f"agreement {100 * row['agreement']:.2f}%, {d:+.2f} points",
                row["agreement"] >= 0.98 and d <= 0.5,
            )
    return checks


MAIN_COLUMNS = [
    ("method", "method", cp.fmt_text),
    ("accuracy %", "accuracy", cp.fmt_percent),
    ("top-1 agreement %", "agreement", cp.fmt_percent),
    ("bytes on disk", "size_bytes", cp.fmt_number()),
    ("packed .ncq bytes", "packed_bytes", cp.fmt_number()),
    ("batch 1 ms", "latency_ms", cp.fmt_number(3)),
    ("batch 64 ms", "latency_b64_ms", cp.fmt_number(1)),
    ("speed-up b1", "speedup_b1", cp.fmt_number(2)),
    ("speed-up b64", "speedup_b64", cp.fmt_number(2)),
    ("notes", "notes", cp.fmt_text),
]


# (label, row, float row of the same runtime): E2 timed everything in PyTorch; our int8 runs in ORT
E2_ROWS = (
    ("float (PyTorch)", "float (PyTorch)", "float (PyTorch)"),
    ("float (ONNX Runtime)", "float (ONNX Runtime)", "float (ONNX Runtime)"),
    ("static PTQ (netcompress W8A8, ORT)", "netcompress W8A8 PTQ", "float (ONNX Runtime)"),
    (
        "dynamic PTQ (netcompress, Linear only, ORT)",
        "netcompress dynamic PTQ (Linear)",
        "float (ONNX Runtime)",
    ),
    ("static PTQ (torch.ao FX)", "torch.ao FX PTQ (x86)", "float (PyTorch)"),
)


def e2_table(result: dict[str, Any]) -> str:
    """E2's table: file size (MB), accuracy, CPU time relative to float (batch 64).

    Time is given relative to PyTorch float (E2's reference) and to the float model of the
    same runtime (what the quantization alone buys).
    """
    rows = {r["method"]: r for r in result["rows"]}
    base = rows["float (PyTorch)"]
    out = []
    for label, key, same in E2_ROWS:
        if key in rows and same in rows:
            r = rows[key]
            out.append(
                {
                    "method": label,
                    "mb": r["size_bytes"] / 1e6,
                    "accuracy": r["accuracy"],
                    "cpu_time": 100 * r["latency_b64_ms"] / base["latency_b64_ms"],
                    "cpu_time_same": 100 * r["latency_b64_ms"] / rows[same]["latency_b64_ms"],
                }
            )
    columns = [
        ("method", "method", cp.fmt_text),
        ("file size (MB)", "mb", cp.fmt_number(3)),
        ("accuracy %", "accuracy", cp.fmt_percent),
        ("CPU time vs PyTorch float, b64 (%)", "cpu_time", cp.fmt_number(1)),
        ("vs float of same runtime (%)", "cpu_time_same", cp.fmt_number(1)),
    ]
    return cp.markdown_table(out, columns)


def render(
    results: list[dict[str, Any]],
    *,
    command: str,
    machine: dict[str, Any],
    config: QuantBenchConfig,
    protocol: cp.ProtocolConfig,
    elapsed_s: float,
) -> str:
    """The RESULTS.md section body."""
    import onnxruntime

    lines = [
        f"Command: `{command}` ({datetime.date.today().isoformat()}, {elapsed_s / 60:.1f} min in all).",
        f"Machine: {machine['cpu_count']} CPUs ({machine['cpu']}) shared with other jobs; torch {machine['torch']}, "
        f"onnxruntime {onnxruntime.__version__}; {config.threads} thread for every runtime when timing "
        f"(torch.set_num_threads, ORT intra_op_num_threads); load average {machine['load_start']} at the start, "
        f"{machine['load_end']} at the end.",
        f"Protocol `{protocol.name}`: {protocol.train_subset or 'all'} training images, "
        f"{protocol.test_subset or 10000} test images, baselines {protocol.epochs} epochs (benchmarks/cifar_protocol.py). "
        f"Calibration: the same {config.calib_images} non-augmented training images for every calibrated method. "
        f"Latency: median over {config.timing_rounds} interleaved rounds (p50 of 20 runs at batch 1, 5 at batch 64 "
        "per round); speed-up is PyTorch float latency / row latency. Accuracy of ONNX rows is that of the ORT model.",
        "",
    ]
    for result in results:
        lines.append(f"### {result['model']} ({result['params']:,} params)")
        lines.append("")
        for row in result["rows"]:
            row["notes"] = notes_of(row)
        lines.append(cp.markdown_table(result["rows"], MAIN_COLUMNS))
        for label, error in result["failures"].items():
            lines.append(f"\n{label} failed: `{error[:300]}`")
        lines.append(
            f"\nLoad average while timing: {result['load_average_timing']['before']} -> "
            f"{result['load_average_timing']['after']}.\n"
        )
        lines.append(f"E2-style table ({result['model']}):\n")
        lines.append(e2_table(result))
        lines.append("")
    checks = [c for r in results for c in check_targets(r)]
    lines.append("Targets:\n")
    lines.append(
        cp.markdown_table(
            [{**c, "verdict": "met" if c["ok"] else "NOT met"} for c in checks],
            [
                ("model", "model", cp.fmt_text),
                ("target", "target", cp.fmt_text),
                ("measured", "measured", cp.fmt_text),
                ("verdict", "verdict", cp.fmt_text),
            ],
        )
    )
    return "\n".join(lines)
