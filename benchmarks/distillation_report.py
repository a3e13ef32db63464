"""The RESULTS.md section of benchmarks/distillation.py: its columns and body.

Imported by benchmarks/distillation.py (which re-exports every name here); not a script of its own.
"""

from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING

try:
    from benchmarks import cifar_protocol as cp
except ModuleNotFoundError:  # run as `python benchmarks/distillation.py`: its folder is on sys.path
    import cifar_protocol as cp

if TYPE_CHECKING:  # the script's own class, for annotations only (the script imports this module)
    from distillation import Bench


COLUMNS = [
    ("run", "row", cp.fmt_text),
    ("model", "model", cp.fmt_text),
    ("teacher", "teacher", cp.fmt_text),
    ("epochs", "epochs", cp.fmt_number()),
    ("params", "params", cp.fmt_number()),
    ("MACs", "macs", cp.fmt_number()),
    ("test acc. %", "accuracy", cp.fmt_percent),
    ("vs student alone (points)", "delta_points", cp.fmt_number(2)),
    ("train s", "train_time_s", cp.fmt_number()),
]


def section_body(bench: Bench, *, command: str, timings: dict[str, dict[str, float]]) -> str:
    """The RESULTS.md section: command, machine, setup, the table, reference and low-rank details."""
    cfg, by_row = bench.config, {r["row"]: r for r in bench.rows}
    gain = by_row["student, KD from strong teacher"]["delta_points"]
    lines = [
        f"Command: `{command}` ({datetime.date.today().isoformat()}), {time.perf_counter() - bench.started:.0f} s "
        "in all (cached baselines load instead of training; `train s` shows the time of the run that trained them).",
        cp.describe_machine(cp.machine_description(), timing_threads=1),
        f"Setup: CIFAR-10 {len(bench.bundle.train):,} training images (class-balanced subset, crop+flip), the full "
        f"{len(bench.bundle.test):,}-image test set, 32x32. Students train {cfg.student_epochs} epochs, SGD "
        f"lr {cfg.student_lr} momentum 0.9, wd 5e-4, per-batch cosine, same seed, initial weights and batch order "
        f"for every student run; KD T={cfg.temperature}, alpha={cfg.alpha} (fixed beforehand, not tuned). "
        f"Teachers: {cfg.weak_teacher} trained {cfg.weak_teacher_epochs} epochs (weak) and "
        f"{cfg.strong_teacher_epochs} epochs (strong, the protocol baseline). Fine-tunes: {cfg.finetune_epochs} "
        f"epochs at lr {cfg.finetune_lr}. Accuracy is measured once on the test set at the end (no epoch picked).",
        "",
        cp.markdown_table(bench.rows, COLUMNS),
        "",
        f"KD from the strong teacher vs the student alone: **{gain:+.2f} points** (target >= +2: "
        f"{'met' if gain >= 2 else 'NOT met'}).",
    ]
    if "reference" in bench.extra:
        ref = bench.extra["reference"]
        lines.append(
            f"netcompress `distill` vs the bare PyTorch KD loop (same init, batches, schedule and loss): accuracy "
            f"gap {ref['accuracy_gap_points']:+.2f} points, max |weight difference| {ref['max_abs_weight_diff']:.2e}, "
            f"first-epoch train loss {ref['first_epoch_train_loss'][0]:.5f} vs {ref['first_epoch_train_loss'][1]:.5f}, "
            f"{ref['epoch_time_s'][0]:.1f} vs {ref['epoch_time_s'][1]:.1f} s per epoch."
        )
        check = bench.extra["step_check"]
        lines.append(
            f"Step check, first {check['steps']} batches from one init: bare loop with the KL on log-probabilities "
            f"(netcompress's floating-point form) max |weight difference| "
            f"{check['max_abs_weight_diff_log_target']:.2e}; with the textbook softmax-target KL "
            f"{check['max_abs_weight_diff_textbook']:.2e}."
        )
    low = bench.extra["low_rank"]
    ranks = ", ".join(f"{r['name']} rank {r['rank']}/{r['full_rank']}" for r in low["layers"])
    lines.append(
        f"Low rank ({low['mode']} SVD, {cfg.low_rank_budget:g} of each layer's parameters): {ranks}; "
        f"{low['params_before']:,} -> {low['params_after']:,} params in the model."
    )
    prune = bench.extra["pruning"]
    lines.append(
        f"Pruning: {prune['params_before']:,} -> {prune['params_after']:,} params, "
        f"{prune['macs_before']:,} -> {prune['macs_after']:,} MACs."
    )
    if timings:
        cells = "; ".join(
            f"{name} {t['latency_ms']:.2f} / {t['latency_b64_ms']:.1f}" for name, t in timings.items()
        )
        lines.append(f"CPU latency ms, batch 1 / batch 64, 1 thread, median of interleaved rounds: {cells}.")
    return "\n".join(lines)
