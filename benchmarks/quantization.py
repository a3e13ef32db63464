"""Quantization benchmark on the CIFAR-10 CPU protocol: netcompress int8/int4 against its peers.

For each protocol model (the narrow VGG and the depthwise-separable ``mobilenet_student``,
both trained by :func:`benchmarks.cifar_protocol.train_baseline`) one run measures:

- float in PyTorch and the same float model exported to ONNX and run in ONNX Runtime;
- netcompress W8A8 static PTQ (per-channel symmetric weights, calibrated uint8 activations),
  exported as int8 and run in ONNX Runtime (the deployed model);
- netcompress W4A8 QAT (LSQ by default, a few epochs from the float model), exported the same way;
- netcompress mixed precision under a byte budget (a share of the W8A8 packed file);
- netcompress dynamic PTQ (Linear layers only, as E2 did);
- the peers: ONNX Runtime ``quantize_static`` (QDQ, per-channel, the same calibration images) on
  the float ONNX file, and ``torch.ao.quantization`` FX PTQ (x86 qconfig), reported as failed
  if it no longer imports or converts.

Columns: accuracy, top-1 agreement with the float model, bytes on disk, latency at batch 1 and
64 (median over interleaved rounds, one thread for every runtime) and speed-up vs PyTorch float.

    python benchmarks/quantization.py                # CPU protocol, ~10-20 min on 2 shared cores
    python benchmarks/quantization.py --quick --no-write   # smoke run, ~1-2 min
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from netcompress.core import Config, atomic_write_text, check_choice, check_range
from netcompress.core.methods import MethodData, apply
from netcompress.evaluation import time_alternating
from netcompress.export.onnx import OrtModel, export_onnx
from netcompress.quantization import (
    PTQStaticConfig,
    freeze_quantizers_,
    mixed_precision_quantize,
    prepare_qat,
    quantize,
    save_quantized,
)
from netcompress.training import TrainConfig, fit

try:
    from benchmarks import cifar_protocol as cp
except ModuleNotFoundError:  # run as `python benchmarks/quantization.py`: its folder is on sys.path
    import cifar_protocol as cp

SECTION = "## Quantization (CIFAR-10 CPU protocol)"
# The depthwise-separable student is trained exactly like the protocol's VGG (same schedule and lr).
cp.PROTOCOL_MODELS.setdefault("mobilenet_student", {"model": "mobilenet_student", "kwargs": {}, "lr": 0.05})
DEFAULT_MODELS = ("narrow_vgg", "mobilenet_student")


@dataclasses.dataclass
class QuantBenchConfig(Config):
    """Settings of one benchmark run (defaults = the recorded run).

    Example:
        >>> QuantBenchConfig(qat_epochs=3).mixed_budget_ratio
        0.4
    """

    calib_images: int = 1024  # non-augmented training images, shared by every calibrated method
    calib_batch_size: int = 64
    qat_epochs: int = 3
    # 0.01 undid what QAT should fix: mixed 2/4/8-bit VGG 69.6% after PTQ, 67.4% after a QAT epoch
    qat_lr: float = 0.001
    qat_method: str = "lsq"
    qat_ends_8bit: bool = True  # first conv and classifier at 8 bits (the usual W4 convention)
    mixed_budget_ratio: float = 0.4  # budget = this share of the W8A8 model's packed bytes
    mixed_bits: tuple[int, ...] = (2, 4, 8)
    act_observer: str = (
        PTQStaticConfig.act_observer
    )  # observer of the main W8A8 row (the percentile row is beside it)
    mixed_qat_epochs: int = 1  # QAT of the mixed-precision model at its bit widths (0: PTQ only)
    timing_rounds: int = 5
    threads: int = 1

    def __post_init__(self) -> None:
        check_range("calib_images", self.calib_images, 1)
        check_range("calib_batch_size", self.calib_batch_size, 1)
        check_range("qat_epochs", self.qat_epochs, 0)
        check_range("mixed_qat_epochs", self.mixed_qat_epochs, 0)
        check_choice("qat_method", self.qat_method, ("ste", "lsq"))
        check_range("mixed_budget_ratio", self.mixed_budget_ratio, 0.01, 1.0)
        check_range("timing_rounds", self.timing_rounds, 1)
        check_range("threads", self.threads, 1)


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


def calibration_batches(
    bundle: Any, *, num_images: int, batch_size: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed random set of training images without augmentation, as ``(x, y)`` batches.

    Every calibrated method (ours, ONNX Runtime's, torch.ao's) sees exactly these images.

    Example:
        >>> len(calibration_batches(bundle, num_images=256, batch_size=64))
        4
    """
    train = copy.copy(bundle.train)
    if hasattr(train, "augment"):
        train.augment = False  # calibrate on the images as the model sees them at test time
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(train), generator=gen)[: min(num_images, len(train))].tolist()
    loader = DataLoader(torch.utils.data.Subset(train, index), batch_size=batch_size, shuffle=False)
    return [(x, y) for x, y in loader]


def logits_on(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """All test-set logits and labels of ``model`` (eval mode, no gradients)."""
    model.eval()
    outs, labels = [], []
    with torch.inference_mode():
        for x, y in loader:
            outs.append(model(x).reshape(x.shape[0], -1).float())
            labels.append(torch.as_tensor(y))
    return torch.cat(outs), torch.cat(labels)


def score(logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Accuracy and top-1 agreement with the float model's ``reference`` logits (fractions)."""
    pred = logits.argmax(1)
    return {
        "accuracy": float((pred == labels).float().mean()),
        "agreement": float((pred == reference.argmax(1)).float().mean()),
    }


class CalibReader:
    """ONNX Runtime ``CalibrationDataReader`` over fixed batches (module level: picklable, reusable)."""

    def __init__(
        self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], input_name: str = "input"
    ) -> None:
        self.arrays = [np.ascontiguousarray(x.numpy(), dtype=np.float32) for x, _ in batches]
        self.input_name = input_name
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.arrays):
            return None
        self.position += 1
        return {self.input_name: self.arrays[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


def ort_quantize_static(
    float_onnx: Path, out_path: Path, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, Any]:
    """ONNX Runtime's own static quantizer: QDQ, per-channel int8 weights, uint8 activations, min-max.

    Example:
        >>> ort_quantize_static(Path("m.onnx"), Path("m_ort_int8.onnx"), calib)["size_bytes"]
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_path.with_suffix(".pre.onnx")
    quant_pre_process(str(float_onnx), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(out_path),
        CalibReader(batches),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink(missing_ok=True)
    return {"size_bytes": out_path.stat().st_size}


def torch_ao_fx_ptq(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], example: torch.Tensor
) -> nn.Module:
    """``torch.ao.quantization`` FX post-training quantization (x86/fbgemm qconfig) of a copy of ``model``.

    Deprecated upstream; the benchmark calls it while it still imports and reports any failure.

    Example:
        >>> qmodel = torch_ao_fx_ptq(model, calib, torch.randn(1, 3, 32, 32))
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (example,))
    with torch.inference_mode():
        for x, _ in batches:
            prepared(x)
    return convert_fx(prepared).eval()


def state_dict_bytes(model: nn.Module, path: Path) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the float/torch.ao models' file on disk."""
    torch.save(model.state_dict(), path)
    return path.stat().st_size


def end_layers(model: nn.Module) -> list[str]:
    """Names of the first and the last Conv/Linear layer (kept at 8 bits in W4 QAT by convention)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    return [names[0], names[-1]] if len(names) > 1 else names


def run_qat(
    model: nn.Module,
    train_loader: DataLoader,
    calib: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    config: QuantBenchConfig,
    protocol: cp.ProtocolConfig,
    epochs: int,
    from_ptq: nn.Module | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """W4A8 QAT from the float model (or QAT of a PTQ model's bit widths, ``from_ptq``).

    Returns the frozen fake-quantized model and a summary.
    """
    layers = None
    if from_ptq is None and config.qat_ends_8bit:
        layers = {n: {"bits": 8} for n in end_layers(model)}
    qat_model = prepare_qat(
        model,
        bits=4,
        act_bits=8,
        method=config.qat_method,
        layers=layers,
        from_ptq=from_ptq,
        calib_loader=calib,
        num_calib_batches=len(calib),
    )
    train_config = TrainConfig(
        epochs=epochs,
        lr=config.qat_lr,
        momentum=protocol.momentum,
        weight_decay=protocol.weight_decay,
        schedule="cosine",
        seed=protocol.seed,
        progress=False,
    )
    started = time.perf_counter()
    history = fit(qat_model, train_loader, config=train_config) if epochs else None
    freeze_quantizers_(qat_model.eval())
    return qat_model, {
        "epochs": epochs,
        "method": config.qat_method,
        "lr": config.qat_lr,
        "eight_bit_layers": sorted(layers or {}),
        "train_time_s": round(time.perf_counter() - started, 1),
        "train_acc": [round(r["train_acc"], 4) for r in history.rows] if history else [],
    }


def benchmark_model(
    name: str, *, protocol: cp.ProtocolConfig, bundle: Any, config: QuantBenchConfig, work: Path
) -> dict[str, Any]:
    """All rows for one protocol model: accuracy, agreement, bytes, latency; JSON-able.

    Example:
        >>> result = benchmark_model("narrow_vgg", protocol=PROTOCOLS["quick"], bundle=b, config=QuantBenchConfig(), work=Path("/tmp/q"))
        >>> [r["method"] for r in result["rows"]][:2]
        ['float (PyTorch)', 'float (ONNX Runtime)']
    """
    work.mkdir(parents=True, exist_ok=True)
    model, info = cp.train_baseline(name, protocol=protocol, bundle=bundle)
    log(f"{name}: baseline ready (cache hit: {info['cache_hit']})")
    train_loader, _ = cp.loaders(bundle, protocol)
    test_loader = DataLoader(bundle.test, batch_size=protocol.eval_batch_size, shuffle=False)
    example = cp.example_input(bundle)
    calib = calibration_batches(bundle, num_images=config.calib_images, batch_size=config.calib_batch_size)
    reference, labels = logits_on(model, test_loader)
    # method label -> (deployed model to time and score, bytes on disk, extra facts)
    deployed: dict[str, tuple[nn.Module, int, dict[str, Any]]] = {}
    failures: dict[str, str] = {}
    deployed["float (PyTorch)"] = (model, state_dict_bytes(model, work / f"{name}_fp32.pt"), {})

    fp32_path = work / f"{name}_fp32.onnx"
    fp32 = export_onnx(model, fp32_path, example)
    deployed["float (ONNX Runtime)"] = (OrtModel(fp32_path), fp32["size_bytes"], {"check": fp32["check"]})

    def nc_int8(label: str, qmodel: nn.Module, stem: str, extra: dict[str, Any]) -> None:
        path = work / f"{name}_{stem}.onnx"
        summary = export_onnx(qmodel, path, example, int8=True)
        packed = save_quantized(qmodel, work / f"{name}_{stem}.ncq")["size_bytes"]
        fake = score(*logits_on(qmodel, test_loader), reference)
        facts = {
            "packed_bytes": packed,
            "int8_ops": summary["int8_op_counts"],
            "onnx_check": summary["check"],
            "fake_quant_accuracy": fake["accuracy"],
            **extra,
        }
        deployed[label] = (OrtModel(path), summary["size_bytes"], facts)
        log(f"{name}: {label} exported ({summary['size_bytes']:,} bytes, {summary['int8_op_counts']})")

    for label, observer in (
        ("netcompress W8A8 PTQ", config.act_observer),
        ("netcompress W8A8 PTQ, percentile observer", "percentile"),
    ):
        kwargs = {} if observer is None else {"act_observer": observer}
        w8_config = PTQStaticConfig(
            bits=8, act_bits=8, granularity="per_channel", scheme="symmetric",
            num_calib_batches=len(calib), **kwargs,
        )  # fmt: skip
        w8_result = apply(model, w8_config, MethodData(calib_loader=calib))
        w8, w8_summary = w8_result.model, w8_result.summary
        used = w8_config.act_observer
        nc_int8(label, w8, "w8a8" if observer else "w8a8_default", {"act_observer": used})
        if observer:
            w8a8_summary = w8_summary

    qat_model, qat_info = run_qat(
        model, train_loader, calib, config=config, protocol=protocol, epochs=config.qat_epochs
    )
    nc_int8("netcompress W4A8 QAT", qat_model, "w4a8_qat", {"qat": qat_info})

    budget = int(config.mixed_budget_ratio * deployed["netcompress W8A8 PTQ"][2]["packed_bytes"])
    mixed, mixed_summary = mixed_precision_quantize(
        model, calib, budget_bytes=budget, bits_options=config.mixed_bits, act_bits=8,
        num_calib_batches=len(calib),
    )  # fmt: skip
    bits_used = sorted(mixed_summary["bits"].values())
    label = f"netcompress mixed ({'/'.join(str(b) for b in sorted(set(bits_used)))}-bit W, A8)"
    mixed_facts = {"budget_bytes": budget, "bits": mixed_summary["bits"]}
    nc_int8(label, mixed, "mixed", mixed_facts)
    if config.mixed_qat_epochs:
        # the same bit widths, then a short QAT: what a budget this tight needs to recover accuracy
        mixed_qat, mixed_qat_info = run_qat(
            model, train_loader, calib, config=config, protocol=protocol,
            epochs=config.mixed_qat_epochs, from_ptq=mixed,
        )  # fmt: skip
        nc_int8(
            label.replace("A8)", "A8) + QAT"), mixed_qat, "mixed_qat", {**mixed_facts, "qat": mixed_qat_info}
        )

    dyn = quantize(model, mode="dynamic", bits=8)
    nc_int8("netcompress dynamic PTQ (Linear)", dyn, "dynamic", {})

    ort_path = work / f"{name}_ort_qdq.onnx"
    try:
        ort_info = ort_quantize_static(fp32_path, ort_path, calib)
        deployed["ORT quantize_static (QDQ)"] = (OrtModel(ort_path), ort_info["size_bytes"], {})
    except Exception as exc:  # a peer failing is a result, not a crash of the benchmark
        failures["ORT quantize_static (QDQ)"] = f"{type(exc).__name__}: {exc}"
    try:
        ao = torch_ao_fx_ptq(model, calib, example)
        deployed["torch.ao FX PTQ (x86)"] = (ao, state_dict_bytes(ao, work / f"{name}_torch_ao.pt"), {})
    except Exception as exc:
        failures["torch.ao FX PTQ (x86)"] = f"{type(exc).__name__}: {exc}"
        log(traceback.format_exc(limit=3))

    rows = []
    for label, (module, size_bytes, facts) in deployed.items():
        rows.append(
            {
                "method": label,
                "size_bytes": size_bytes,
                **score(*logits_on(module, test_loader), reference),
                **facts,
            }
        )
        log(f"{name}: {label}: accuracy {rows[-1]['accuracy']:.4f}, agreement {rows[-1]['agreement']:.4f}")
    load_before = cp.machine_description()["load_average"]
    timings = time_alternating(
        {label: module for label, (module, _, _) in deployed.items()},
        example,
        rounds=config.timing_rounds,
        threads=config.threads,
    )
    load_after = cp.machine_description()["load_average"]
    base = timings["float (PyTorch)"]
    for row in rows:
        t = timings[row["method"]]
        row.update(
            latency_ms=t["latency_ms"],
            latency_b64_ms=t["latency_b64_ms"],
            speedup_b1=base["latency_ms"] / t["latency_ms"],
            speedup_b64=base["latency_b64_ms"] / t["latency_b64_ms"],
        )
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "baseline": {k: info.get(k) for k in ("train_time_s", "cache_hit", "path")},
        "rows": rows,
        "failures": failures,
        "load_average_timing": {"before": load_before, "after": load_after},
        "w8a8_summary": {
            k: w8a8_summary.get(k) for k in ("activation_quantizers", "float_ops", "weight_bytes")
        },
    }


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny protocol, 1 QAT epoch")
    parser.add_argument("--full", action="store_true", help="full CIFAR-10 protocol (GPU or a long CPU run)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated protocol models")
    parser.add_argument("--qat-epochs", type=int, default=None)
    parser.add_argument("--mixed-qat-epochs", type=int, default=None)
    parser.add_argument("--qat-lr", type=float, default=0.001)
    parser.add_argument("--qat-method", default="lsq", choices=("ste", "lsq"))
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="do not touch benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    protocol = cp.protocol_from_flags(quick=args.quick, full=args.full)
    config = QuantBenchConfig(
        qat_epochs=args.qat_epochs if args.qat_epochs is not None else (1 if args.quick else 3),
        mixed_qat_epochs=args.mixed_qat_epochs if args.mixed_qat_epochs is not None else 1,
        qat_method=args.qat_method,
        qat_lr=args.qat_lr,
        timing_rounds=args.rounds or (2 if args.quick else 5),
        threads=args.threads,
        calib_images=256 if args.quick else 1024,
    )
    torch.set_num_threads(args.threads)  # training and evaluation too: the cores are shared
    started = time.perf_counter()
    machine = cp.machine_description()
    machine["load_start"] = machine["load_average"]
    bundle = cp.load_data(protocol)
    work = cp.CACHE_DIR / "quantization" / protocol.name
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        log(f"{name}: start")
        results.append(
            benchmark_model(name, protocol=protocol, bundle=bundle, config=config, work=work / name)
        )
    machine["load_end"] = cp.machine_description()["load_average"]
    command = "python benchmarks/quantization.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = render(
        results,
        command=command.strip(),
        machine=machine,
        config=config,
        protocol=protocol,
        elapsed_s=time.perf_counter() - started,
    )
    payload = {
        "config": config.to_dict(),
        "protocol": protocol.to_dict(),
        "machine": machine,
        "results": results,
    }
    atomic_write_text(work / "results.json", json.dumps(payload, indent=2, default=str))
    print(body, flush=True)
    if not args.no_write:
        cp.write_results_section(SECTION, body)
        log(f"wrote {SECTION!r} in benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
