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
import dataclasses
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from netcompress.core import Config, atomic_write_text, check_choice, check_range
from netcompress.core.methods import MethodData, apply
from netcompress.evaluation import time_alternating
from netcompress.export.onnx import OrtModel, export_onnx
from netcompress.quantization import (
    PTQStaticConfig,
    mixed_precision_quantize,
    quantize,
    save_quantized,
)

try:
    from benchmarks import cifar_protocol as cp
except ModuleNotFoundError:  # run as `python benchmarks/quantization.py`: its folder is on sys.path
    import cifar_protocol as cp
if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere: its modules beside it
    sys.path.append(str(Path(__file__).resolve().parent))
from quantization_peers import (  # noqa: E402, F401  (re-exported: the script's names stay importable from it)
        CalibReader,
        calibration_batches,
        end_layers,
        log,
        logits_on,
        ort_quantize_static,
        run_qat,
        score,
        state_dict_bytes,
        torch_ao_fx_ptq,
)
from quantization_report import (  # noqa: E402, F401  (re-exported: the script's names stay importable from it)
        E2_ROWS,
        MAIN_COLUMNS,
        check_targets,
        e2_table,
        notes_of,
        render,
)

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
