"""E3 at the CIFAR-10 CPU protocol: knowledge distillation, pruning + KD and low rank.

Experiment E3, at full scale, distils an 8-conv food CNN's depthwise-separable student (``food_cnn_dws``)
from a weak and a strong teacher. Here, on the CPU protocol of ``cifar_protocol`` (10,000-image
class-balanced training subset, full 10,000-image test set, 32x32 inputs, 10 classes):

- teachers: the protocol's narrow VGG (32-32-M-64-64-M-128-128-M-256-M, 0.59 M params), the same
  architecture at two training lengths, as E3's two ResNet-18 teachers differ only in training:
  weak = 3 epochs, strong = the protocol's cached 15-epoch baseline;
- students: ``food_cnn_dws`` trained alone, by KD from each teacher, and by a bare PyTorch KD loop
  written below (same loss, init, data order and schedule) to check that ``netcompress.distill``
  matches it; every student run has the same epochs, learning rate and cosine schedule;
- pruning + KD: channel pruning (L1, ratio 0.3 per layer, about half the parameters) of the
  KD-trained student, fine-tuned with KD from the strong teacher (and with plain CE as control);
- low rank: the trained original ``food_cnn`` with its classifier and last four convs factorised
  by truncated SVD to half their parameters (``param_budget=0.5`` per layer), then fine-tuned.

Every trained model is cached under ``benchmarks/.cache/`` (baselines via ``train_baseline``), so a
killed run resumes where it stopped. Loss: ``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE``.

    python benchmarks/distillation.py            # CPU protocol, writes its section of RESULTS.md
    python benchmarks/distillation.py --quick    # smoke run: 500 images, 1 epoch, no RESULTS.md
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from netcompress.core import Config, atomic_write_json, check_choice, check_range
from netcompress.evaluation import time_alternating
from netcompress.low_rank import CONV_MODES, factorize
from netcompress.pruning.channel import ChannelPruneConfig, channel_prune
from netcompress.training import fit

try:
    from benchmarks import cifar_protocol as cp
except ModuleNotFoundError:  # run as `python benchmarks/distillation.py`: its folder is on sys.path
    import cifar_protocol as cp
if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere: its modules beside it
    sys.path.append(str(Path(__file__).resolve().parent))
from distillation_report import (  # noqa: E402, F401  (re-exported: the script's names stay importable from it)
    COLUMNS,
    section_body,
)
from distillation_steps import (  # noqa: E402, F401  (re-exported: the script's names stay importable from it)
    cached_model,
    compare_reference,
    distill_with_history,
    max_weight_diff,
    reference_kd_fit,
    step_check,
    train_config,
    weights_key,
)

SECTION = "## Distillation and low rank (CIFAR-10 CPU protocol, E3)"
# E3's models join the protocol's model table, so train_baseline trains and caches them like the
# protocol's own baselines (its cache key holds the registry name and options).
E3_MODELS = {
    "food_cnn": {"model": "food_cnn", "kwargs": {}, "lr": 0.05},
    "food_cnn_dws": {"model": "food_cnn_dws", "kwargs": {}, "lr": 0.05},
}
for _name, _spec in E3_MODELS.items():
    cp.PROTOCOL_MODELS.setdefault(_name, _spec)

# food_cnn's classifier and its last four convs (the 2x2-resolution stage): 93% of its parameters
LOW_RANK_LAYERS = ["features.16", "features.19", "features.22", "features.25", "fc"]


@dataclasses.dataclass
class DistillBenchConfig(Config):
    """Epochs, KD settings, pruning ratio and low-rank budget of one benchmark run.

    Example:
        >>> DistillBenchConfig(student_epochs=1).temperature
        4.0
    """

    student_epochs: int = 10
    student_lr: float = 0.05
    weak_teacher: str = "narrow_vgg"
    weak_teacher_epochs: int = 3
    strong_teacher: str = "narrow_vgg"
    strong_teacher_epochs: int = 15
    temperature: float = 4.0
    alpha: float = 0.9
    prune_ratio: float = 0.3
    finetune_epochs: int = 3
    finetune_lr: float = 0.01
    low_rank_budget: float = 0.5
    low_rank_mode: str = "channel"
    reference: bool = True

    def __post_init__(self) -> None:
        for name in ("student_epochs", "weak_teacher_epochs", "strong_teacher_epochs", "finetune_epochs"):
            check_range(name, getattr(self, name), 1)
        check_range("temperature", self.temperature, 1e-6)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("prune_ratio", self.prune_ratio, 0.0, 0.95)
        check_range("low_rank_budget", self.low_rank_budget, 1e-3, 1.0)
        check_choice("low_rank_mode", self.low_rank_mode, CONV_MODES)
        check_choice("weak_teacher", self.weak_teacher, cp.PROTOCOL_MODELS)
        check_choice("strong_teacher", self.strong_teacher, cp.PROTOCOL_MODELS)


BENCH_CONFIGS = {
    "quick": DistillBenchConfig(
        student_epochs=1, weak_teacher_epochs=1, strong_teacher_epochs=1, finetune_epochs=1
    ),
    "cpu": DistillBenchConfig(),
}


class Bench:
    """One benchmark run: protocol data, settings, the measured rows and the log."""

    def __init__(self, protocol: cp.ProtocolConfig, config: DistillBenchConfig) -> None:
        self.protocol, self.config = protocol, config
        self.bundle = cp.load_data(protocol)
        self.test_loader = DataLoader(self.bundle.test, batch_size=protocol.eval_batch_size)
        self.example = cp.example_input(self.bundle)
        self.rows: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self.models: dict[str, nn.Module] = {}
        self.started = time.perf_counter()

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", flush=True)

    def settings(self, **more: Any) -> dict[str, Any]:
        return {"protocol": self.protocol.to_dict(), "num_train": len(self.bundle.train), **more}

    def baseline(self, name: str, *, epochs: int, lr: float | None = None) -> tuple[nn.Module, dict]:
        # train_baseline draws the initial weights from the global RNG: seed it so they are fixed
        torch.manual_seed(self.protocol.seed)
        model, info = cp.train_baseline(
            name, protocol=self.protocol, bundle=self.bundle, epochs=epochs, lr=lr
        )
        return model, info

    def fresh_student(self) -> nn.Module:
        torch.manual_seed(self.protocol.seed)  # the same initial weights as the scratch student
        return cp.create_model("food_cnn_dws", num_classes=self.bundle.num_classes)

    def record(
        self, row: str, trained: nn.Module, info: dict[str, Any] | None = None, /, **fields: Any
    ) -> dict[str, Any]:
        """Measure ``trained`` on the test set and add a table row; ``fields`` are shown as given."""
        stats = cp.measure(trained, self.bundle, test_loader=self.test_loader, latency=False)
        entry = {"row": row, **fields, **{k: stats[k] for k in ("accuracy", "params", "macs", "size_bytes")}}
        if info is not None:
            entry["train_time_s"] = info.get("train_time_s")
            entry["cache_hit"] = info.get("cache_hit")
        self.rows.append(entry)
        self.log(f"{row}: accuracy {100 * entry['accuracy']:.2f}%, {entry['params']:,} params")
        return entry

    def kd(
        self,
        kind: str,
        teacher: nn.Module,
        teacher_key: str,
        *,
        init: nn.Module | None = None,
        epochs: int,
        lr: float,
    ) -> tuple[nn.Module, dict]:
        cfg = self.config
        settings = self.settings(
            kind=kind,
            teacher=teacher_key,
            teacher_weights=weights_key(teacher),
            epochs=epochs,
            lr=lr,
            T=cfg.temperature,
            alpha=cfg.alpha,
            init=None if init is None else weights_key(init),
        )

        def produce() -> tuple[nn.Module, dict]:
            student = copy.deepcopy(init) if init is not None else self.fresh_student()
            train_loader, _ = cp.loaders(self.bundle, self.protocol)
            config = train_config(self.protocol, epochs=epochs, lr=lr)
            student, rows = distill_with_history(
                student, teacher, train_loader, config, temperature=cfg.temperature, alpha=cfg.alpha
            )
            return student, {"history": rows}

        return cached_model(kind, settings, produce)

    def reference(self, teacher: nn.Module, teacher_key: str) -> tuple[nn.Module, dict]:
        cfg, protocol = self.config, self.protocol
        settings = self.settings(
            kind="reference",
            teacher=teacher_key,
            teacher_weights=weights_key(teacher),
            epochs=cfg.student_epochs,
            lr=cfg.student_lr,
            T=cfg.temperature,
            alpha=cfg.alpha,
        )

        def produce() -> tuple[nn.Module, dict]:
            student = self.fresh_student()
            train_loader, _ = cp.loaders(self.bundle, protocol)
            rows = reference_kd_fit(
                student,
                teacher,
                train_loader,
                epochs=cfg.student_epochs,
                lr=cfg.student_lr,
                momentum=protocol.momentum,
                weight_decay=protocol.weight_decay,
                seed=protocol.seed,
                temperature=cfg.temperature,
                alpha=cfg.alpha,
            )
            return student, {"history": rows}

        return cached_model("reference", settings, produce)

    def finetune(self, kind: str, model: nn.Module) -> tuple[nn.Module, dict]:
        cfg = self.config
        settings = self.settings(
            kind=kind, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, init=weights_key(model)
        )

        def produce() -> tuple[nn.Module, dict]:
            tuned = copy.deepcopy(model)
            train_loader, _ = cp.loaders(self.bundle, self.protocol)
            config = train_config(self.protocol, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr)
            return tuned, {"history": fit(tuned, train_loader, config=config).rows}

        return cached_model(kind, settings, produce)


def run(bench: Bench) -> None:
    """Train (or load) every model of the table and measure it; fills ``bench.rows``/``extra``.

    The bare-loop reference trains last (it checks the library; the other rows do not need it)
    but its row is shown next to the KD run it checks.
    """
    cfg = bench.config
    epochs = cfg.student_epochs
    weak, info = bench.baseline(cfg.weak_teacher, epochs=cfg.weak_teacher_epochs)
    bench.record("teacher, weak", weak, info, model=cfg.weak_teacher, epochs=cfg.weak_teacher_epochs)
    original, info = bench.baseline("food_cnn", epochs=epochs, lr=cfg.student_lr)
    bench.record("original, from scratch", original, info, model="food_cnn", epochs=epochs)
    scratch, info = bench.baseline("food_cnn_dws", epochs=epochs, lr=cfg.student_lr)
    base = bench.record("student, from scratch", scratch, info, model="food_cnn_dws", epochs=epochs)
    # the strong teacher may be training in another benchmark (train_baseline then waits on its
    # lock), so it is asked for after the runs that do not need it; its row goes second
    strong, info = bench.baseline(cfg.strong_teacher, epochs=cfg.strong_teacher_epochs)
    bench.record("teacher, strong", strong, info, model=cfg.strong_teacher, epochs=cfg.strong_teacher_epochs)
    bench.rows.insert(1, bench.rows.pop())
    weak_key = f"{cfg.weak_teacher}-{cfg.weak_teacher_epochs}ep"
    strong_key = f"{cfg.strong_teacher}-{cfg.strong_teacher_epochs}ep"
    student = {"model": "food_cnn_dws", "epochs": epochs}
    kd_strong, kd_info = bench.kd("kd", strong, strong_key, epochs=epochs, lr=cfg.student_lr)
    kd_row = bench.record(
        "student, KD from strong teacher", kd_strong, kd_info, teacher=strong_key, **student
    )
    kd_weak, info = bench.kd("kd", weak, weak_key, epochs=epochs, lr=cfg.student_lr)
    bench.record("student, KD from weak teacher", kd_weak, info, teacher=weak_key, **student)

    pruned, summary = channel_prune(
        kd_strong, bench.example, ChannelPruneConfig(ratio=cfg.prune_ratio, importance="l1")
    )
    tuned = {"model": "food_cnn_dws pruned", "epochs": cfg.finetune_epochs}
    bench.record(
        f"KD student, channels pruned {cfg.prune_ratio:.0%} (no fine-tune)", pruned, model=tuned["model"]
    )
    pruned_kd, info = bench.kd(
        "prune-kd", strong, strong_key, init=pruned, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr
    )
    bench.record("  + KD fine-tune from strong teacher", pruned_kd, info, teacher=strong_key, **tuned)
    pruned_ce, info = bench.finetune("prune-ce", pruned)
    bench.record("  + plain CE fine-tune (control)", pruned_ce, info, **tuned)
    keys = ("params_before", "params_after", "macs_before", "macs_after", "architecture")
    bench.extra["pruning"] = {k: summary[k] for k in keys}

    factorized = {}
    for mode in CONV_MODES:  # both modes measured without fine-tuning; the configured one is fine-tuned
        factorized[mode] = factorize(
            original,
            include=LOW_RANK_LAYERS,
            param_budget=cfg.low_rank_budget,
            conv_mode=mode,
            example_inputs=bench.example,
        )
        bench.record(f"original, low rank ({mode} SVD, no fine-tune)", factorized[mode][0], model="food_cnn")
    small, summary = factorized[cfg.low_rank_mode]
    low_rank, info = bench.finetune(f"low-rank-{cfg.low_rank_mode}", small)
    bench.record(
        f"  + fine-tune ({cfg.low_rank_mode} SVD)",
        low_rank,
        info,
        model="food_cnn",
        epochs=cfg.finetune_epochs,
    )
    keys = ("name", "full_rank", "rank", "params_before", "params_after")
    bench.extra["low_rank"] = {
        "mode": cfg.low_rank_mode,
        "layers": [{k: layer[k] for k in keys} for layer in summary["layers"]],
        "params_before": summary["params_before"],
        "params_after": summary["params_after"],
    }
    bench.models = {
        "teacher": strong,
        "original": original,
        "student": scratch,
        "pruned student": pruned_kd,
        "low-rank original": low_rank,
    }
    if cfg.reference:
        ref, ref_info = bench.reference(strong, strong_key)
        ref_row = bench.record("  same, bare PyTorch KD loop", ref, ref_info, teacher=strong_key, **student)
        bench.rows.insert(bench.rows.index(kd_row) + 1, bench.rows.pop())
        bench.extra["reference"] = compare_reference(kd_strong, kd_info, kd_row, ref, ref_info, ref_row)
        bench.extra["step_check"] = step_check(bench, strong)
        bench.log(f"step check: {bench.extra['step_check']}")
    for row in bench.rows:
        row["delta_points"] = 100 * (row["accuracy"] - base["accuracy"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 images, 1 epoch; no RESULTS.md")
    parser.add_argument("--student-epochs", type=int, default=None)
    parser.add_argument("--no-reference", action="store_true", help="skip the bare-loop KD run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    # one thread: on 2 shared cores two threads spin against other jobs (4-10x slower per batch here)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    protocol = cp.protocol_from_flags(quick=args.quick, full=False)
    config = BENCH_CONFIGS["quick" if args.quick else "cpu"]
    if args.student_epochs is not None:
        config = config.replace(student_epochs=args.student_epochs)
    if args.no_reference:
        config = config.replace(reference=False)
    bench = Bench(protocol, config)
    bench.log(
        f"protocol {protocol.name}: {len(bench.bundle.train)} train / {len(bench.bundle.test)} test images"
    )
    run(bench)
    timings = time_alternating(bench.models, bench.example, rounds=3 if not args.quick else 1)
    table = cp.markdown_table(bench.rows, COLUMNS)
    print(table, flush=True)
    out = cp.CACHE_DIR / f"distillation-{protocol.name}.json"
    atomic_write_json(
        out,
        {
            "config": config.to_dict(),
            "rows": bench.rows,
            "extra": bench.extra,
            "timings": timings,
            "machine": cp.machine_description(),
        },
    )
    bench.log(f"wrote {out}")
    if not (args.quick or args.no_write):
        command = "python benchmarks/distillation.py" + "".join(
            f" {a}" for a in (argv if argv is not None else sys.argv[1:])
        )
        cp.write_results_section(SECTION, section_body(bench, command=command, timings=timings))
        bench.log(f"wrote section {SECTION!r} of {cp.RESULTS_PATH}")
    print(json.dumps(bench.extra, indent=1, default=str)[:4000])


if __name__ == "__main__":
    main()
