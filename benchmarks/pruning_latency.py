"""The pruning benchmark's latency-target mode (``python benchmarks/pruning.py --latency-mode``).

Every method reaches the same *measured* ONNX Runtime batch-64 latency, ``--latency-reduction`` x
lower than the unpruned model (2.5 by default), instead of a MAC budget:

- ``nc_latency``: ``prune_to_target(target="latency", runtime="onnxruntime", batch_size=64)`` (group-L2
  importance as the proxy, channels x8 where groups have 16+, cost table cached under the work folder),
  then BN recalibration;
- ``nc_uniform_at_latency``: one shared ratio for every group (group-L2, channels x8: the MAC-budget
  default, and Torch-Pruning's allocation) with the ratio bisected on the measured ORT latency until it
  reaches the same speed-up, then BN recalibration;
- ``tp_magnitude_at_latency``: Torch-Pruning ``MagnitudeImportance(p=2)`` (its ``MetaPruner``, the
  magnitude pruner) with its ratio bisected on the same measured latency;
- ``nc_macs_high`` / ``tp_magnitude_macs_high``: both at ``--high-mac-reduction`` x fewer MACs (8 by
  default), where allocations differ most: ``prune_to_target(target="macs")`` (uniform group L2, channels
  x8, BN recal.) against Torch-Pruning's ratio bisected on MACs.

Torch-Pruning is optional: without it its rows are left out of the default run with a message (and
naming one in ``--methods`` stops with how to install it). Every row gets the same fine-tune budget.

Each bisection step times the candidate against the unpruned model interleaved
(``netcompress.pruning.latency_table.time_deployed``), so load drift on a shared machine moves both.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from typing import Any

import cifar_protocol as cp
from pruning_depth import DEPTH_ROWS  # registers session 13's rows (depth + width)
from pruning_joint_rows import JOINT_ROWS, joint_checks  # registers session 16's int8-deployed rows
from pruning_methods import METHODS, Context, Pruned, _tp, bisect_ratio, macs_of, with_recalibration
from pruning_recovery import RECOVERY_ROWS  # registers the session-8 rows (fill-up, sensitivity, KD)
from pruning_soft import SOFT_ROWS  # registers session 14's rows (channels faded inside the budget)
from pruning_stages import BOUND_ROWS, LATENCY_BOUND_ROWS, STAGES_ROWS  # registers session 9-10 rows, bounds
from pruning_vgg_depth import VGG_DEPTH_ROWS  # registers session 16's rows (narrow VGG depth + width at 8x)
from pruning_vgg_hint import HINT_ROWS  # registers session 16's rows (the 8x fade with a kept-channel hint)
from pruning_vgg_latency import VGG_LATENCY_ROWS  # registers session 14's row (steadier latency checks)
from torch import nn

from netcompress.pruning import prune_channels, prune_to_target
from netcompress.pruning.latency_table import MeasureSpec, time_deployed

LATENCY_BATCH = 64
LATENCY_ROWS = (
    "nc_latency", "nc_uniform_at_latency", "tp_magnitude_at_latency", "nc_macs_high", "tp_magnitude_macs_high",
    *RECOVERY_ROWS, *(f"{name}_kd" for name in (*RECOVERY_ROWS, "nc_latency")), *STAGES_ROWS, *DEPTH_ROWS,
    *VGG_LATENCY_ROWS, *SOFT_ROWS, *JOINT_ROWS, *VGG_DEPTH_ROWS, *HINT_ROWS,
)  # fmt: skip
TP_ROWS = ("tp_magnitude_at_latency", "tp_magnitude_macs_high")
TP_MISSING = "Torch-Pruning is not installed (pip install torch-pruning): its rows are skipped"
# a ratio bisection stops when the interval is this narrow (7 timed steps from [0, 0.9])
RATIO_STEP = 0.01


def _spec(ctx: Context) -> MeasureSpec:
    return MeasureSpec(target="latency", runtime="onnxruntime", batch_size=LATENCY_BATCH,
                       threads=ctx.config.timing_threads)  # fmt: skip


def measured_speedup(base: nn.Module, model: nn.Module, ctx: Context) -> float:
    """Unpruned / pruned ORT batch-64 latency, timed interleaved."""
    ms = time_deployed({"unpruned": base, "pruned": model}, ctx.example, _spec(ctx))
    return ms["unpruned"] / ms["pruned"]


def bisect_on_latency(
    base: nn.Module, prune_at: Callable[[float], nn.Module], ctx: Context, *, hi: float = 0.9,
    speedup_of: Callable[[nn.Module, nn.Module, Context], float] = measured_speedup,
) -> tuple[float, float, list[dict[str, float]]]:  # fmt: skip
    """Smallest ratio in [0, hi] (to ``RATIO_STEP``) whose measured speed-up (``speedup_of``) reaches the target."""
    target = ctx.config.latency_reduction
    steps = []

    def fits(ratio: float) -> bool:
        speedup = speedup_of(base, prune_at(ratio), ctx)
        steps.append({"ratio": ratio, "speedup": speedup})
        return speedup >= target

    lo = 0.0
    if not fits(hi):
        return hi, steps[-1]["speedup"], steps
    while hi - lo > RATIO_STEP:
        mid = round((lo + hi) / 2, 4)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    speedup = next(s["speedup"] for s in reversed(steps) if s["ratio"] == hi)
    return hi, speedup, steps


@METHODS.register("nc_latency")
def _nc_latency(base: nn.Module, ctx: Context) -> Pruned:
    small, summary = prune_to_target(
        base, ctx.example, target="latency", reduction=ctx.config.latency_reduction, runtime="onnxruntime",
        batch_size=LATENCY_BATCH, threads=ctx.config.timing_threads, importance="group_l2", round_to="auto",
        cache_dir=str(ctx.work_dir / "cost_tables"), out_dir=ctx.work_dir,
    )  # fmt: skip
    info: dict[str, Any] = {
        "label": f"netcompress latency target {ctx.config.latency_reduction}x (ORT b64) + BN recal.",
        "arch": summary["architecture"], "met": summary["met"], "reason": summary["reason"],
        "search_speedup": summary["achieved_reduction"], "speedup_by_form": summary["speedup_by_form"],
        "search_rounds": len(summary["candidates"]), "table_cached": summary["cost_table"]["cached"],
        "table_s": round(summary["cost_table"]["measured_s"], 1), "plot": summary.get("plot"),
        "candidates": [{k: r[k] for k in ("round", "predicted", "measured", "reduction", "proxy_lost", "met")}
                       for r in summary["candidates"]],
    }  # fmt: skip
    return with_recalibration(Pruned(small, info=info), ctx)


@METHODS.register("nc_uniform_at_latency")
def _nc_uniform_at_latency(base: nn.Module, ctx: Context) -> Pruned:
    def prune_at(ratio: float) -> nn.Module:
        return prune_channels(base, ctx.example, ratio=ratio, importance="group_l2", round_to="auto")

    ratio, speedup, steps = bisect_on_latency(base, prune_at, ctx)
    label = (
        f"netcompress uniform group L2 x8, ratio tuned to {ctx.config.latency_reduction}x ORT b64 + BN recal."
    )
    pruned = Pruned(
        prune_at(ratio), info={"label": label, "ratio": ratio, "search_speedup": speedup, "steps": steps}
    )
    return with_recalibration(pruned, ctx)


@METHODS.register("tp_magnitude_at_latency")
def _tp_at_latency(base: nn.Module, ctx: Context) -> Pruned:
    def prune_at(ratio: float) -> nn.Module:
        return _tp_magnitude(base, ctx, ratio)

    ratio, speedup, steps = bisect_on_latency(base, prune_at, ctx, hi=0.8)
    label = f"Torch-Pruning MagnitudeImportance p=2, ratio tuned to {ctx.config.latency_reduction}x ORT b64"
    return Pruned(
        prune_at(ratio),
        info={"label": label, "pruning_ratio": ratio, "search_speedup": speedup, "steps": steps},
    )


def _tp_magnitude(base: nn.Module, ctx: Context, ratio: float) -> nn.Module:
    model = copy.deepcopy(base).eval()
    final = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = _tp().pruner.MetaPruner(model, ctx.example, importance=_tp().importance.MagnitudeImportance(p=2),
                                     pruning_ratio=ratio, ignored_layers=[final])  # fmt: skip
    pruner.step()
    return model


@METHODS.register("nc_macs_high")
def _nc_macs_high(base: nn.Module, ctx: Context) -> Pruned:
    high = ctx.config.high_mac_reduction
    small, summary = prune_to_target(
        base,
        ctx.example,
        target="macs",
        reduction=high,
        importance="group_l2",
        method="uniform",
        round_to="auto",
    )
    label = f"netcompress group L2, uniform, channels x8 at {high:g}x fewer MACs + BN recal."
    return with_recalibration(Pruned(small, info={"label": label, "arch": summary["architecture"]}), ctx)


@METHODS.register("tp_magnitude_macs_high")
def _tp_macs_high(base: nn.Module, ctx: Context) -> Pruned:
    high = ctx.config.high_mac_reduction
    budget = macs_of(base, ctx.example) / high
    ratio = None
    # Torch-Pruning leaves residual-coupled groups alone near ratio 1 (ResNet-20: 131x fewer MACs at 0.9,
    # 2.78x at 0.95), so the bisection starts from the first upper end that fits (0.95 for the narrow VGG)
    for hi in (0.95, 0.9, 0.8):
        try:
            ratio = bisect_ratio(
                lambda r: _tp_magnitude(base, ctx, r), lambda m: macs_of(m, ctx.example) <= budget, hi=hi
            )
            break
        except cp.ConfigError:
            continue
    if ratio is None:
        raise cp.ConfigError(f"Torch-Pruning cannot reach {high:g}x fewer MACs at ratio 0.8, 0.9 or 0.95")
    label = f"Torch-Pruning MagnitudeImportance p=2 at {high:g}x fewer MACs"
    return Pruned(_tp_magnitude(base, ctx, ratio), info={"label": label, "pruning_ratio": ratio})


def latency_methods() -> list[str]:
    """The latency mode's default methods; Torch-Pruning's only when it is installed (else a message says so)."""
    names = [
        "nc_latency",
        "nc_uniform_at_latency",
        "tp_magnitude_at_latency",
        "nc_macs_high",
        "tp_magnitude_macs_high",
    ]
    if importlib.util.find_spec("torch_pruning") is None:
        print(TP_MISSING, flush=True)
        names = [n for n in names if n not in TP_ROWS]
    return names


# the latency mode's own table: the measured ORT batch-64 latency, the reductions, MACs and accuracy
LATENCY_COLUMNS: list[cp.Column] = [
    ("method", "label", cp.fmt_text),
    ("deployed form", "deployed_form", cp.fmt_text),  # int8 rows: accuracy and latency of the int8 ORT file
    ("int8 layers", "int8_layers", cp.fmt_text),
    ("ORT b64 ms", "ort_b64_ms", cp.fmt_number(1)),
    ("ORT speed-up", "ort_speedup_b64", cp.fmt_number(2)),
    ("MMACs", "mmacs", cp.fmt_number(2)),
    ("MAC red. x", "mac_reduction", cp.fmt_number(2)),
    ("acc after FT %", "acc_after", cp.fmt_percent),
    ("val acc %", "acc_val", cp.fmt_percent),
    ("val 5k acc %", "acc_val5k", cp.fmt_percent),
]


def latency_table(rows: list[dict[str, Any]]) -> str:
    """The latency mode's Markdown table."""
    return cp.markdown_table([{**r, "mmacs": r["macs"] / 1e6} for r in rows], LATENCY_COLUMNS)


def latency_checks(
    rows: list[dict[str, Any]],
    target: float,
    accuracy: Callable[[dict[str, Any]], float],
    *,
    high: float = 8.0,
) -> list[str]:
    """The issue's latency-target checks on measured rows (one line each, PASS/MISS with numbers).

    Every ``nc_latency*`` row is checked against the latency target, the peers at the same latency and the
    unpruned model; every ``nc_macs_high*`` row against the ``high`` x MAC budget (within 2 %) and
    Torch-Pruning's row at the same budget (+2 points)."""
    by = {r["method"]: r for r in rows}
    lines = []
    for ours in (
        r for r in rows if r["method"].startswith("nc_latency") and r["method"] not in LATENCY_BOUND_ROWS
    ):
        name, got = ours["method"], ours["ort_speedup_b64"]
        lines.append(f"{name} ORT batch-64 speed-up after fine-tuning {got:.2f}x for {target}x "
                     f"({ours.get('deployed_form', 'float ORT')} file; met within 5 %: "
                     f"{'PASS' if got >= target / 1.05 else 'MISS'}); search's own confirmation "
                     f"{ours['search_speedup']:.2f}x, met={ours['met']} in {ours['search_rounds']} round(s)")  # fmt: skip
        for peer in ("tp_magnitude_at_latency", "tp_magnitude_at_latency_median", "tp_magnitude_at_latency_int8",
                     "nc_uniform_at_latency"):  # fmt: skip
            if peer in by:
                gap = 100 * (accuracy(ours) - accuracy(by[peer]))
                lines.append(f"{name} vs {peer} (ORT b64 {by[peer]['ort_speedup_b64']:.2f}x): {gap:+.2f} points "
                             f"(target >= +1): {'PASS' if gap >= 1 else 'MISS'}")  # fmt: skip
        drop = 100 * (accuracy(by["unpruned"]) - accuracy(ours))
        lines.append(f"{name} vs unpruned: {abs(drop):.2f} points {'lower' if drop >= 0 else 'higher'} (target <= 1): "
                     f"{'PASS' if drop <= 1 else 'MISS'}")  # fmt: skip
    lines += joint_checks(rows, target, accuracy)
    peer = by.get("tp_magnitude_macs_high")
    for ours in (r for r in rows if r["method"].startswith("nc_macs_high")):
        name, red = ours["method"], ours["mac_reduction"]
        budget = "PASS" if high <= red <= high * 1.02 else "MISS"
        line = f"{name}: {red:.2f}x fewer MACs (target {high:g}x within 2 %: {budget})"
        if peer is not None:
            gap = 100 * (accuracy(ours) - accuracy(peer))
            line += (f"; vs tp_magnitude_macs_high ({peer['mac_reduction']:.2f}x): {gap:+.2f} points "
                     f"(target >= +2): {'PASS' if gap >= 2 else 'MISS'}")  # fmt: skip
        lines.append(line)
    for bound in (r for r in rows if r["method"] in BOUND_ROWS and peer is not None):
        gap = 100 * (accuracy(bound) - accuracy(peer))
        lines.append(f"(bound, not a target) {bound['method']} ({bound['mac_reduction']:.2f}x fewer MACs): "
                     f"{gap:+.2f} points over tp_magnitude_macs_high")  # fmt: skip
    for bound in (r for r in rows if r["method"] in LATENCY_BOUND_ROWS):
        drop = 100 * (accuracy(by["unpruned"]) - accuracy(bound))
        line = (f"(bound, not a target) {bound['method']} (ORT b64 {bound['ort_speedup_b64']:.2f}x): {abs(drop):.2f} "
                f"points {'below' if drop > 0 else 'above'} unpruned")  # fmt: skip
        if (peer_at := by.get("tp_magnitude_at_latency")) is not None:
            line += f", {100 * (accuracy(bound) - accuracy(peer_at)):+.2f} over tp_magnitude_at_latency"
        lines.append(line)
    if lines and importlib.util.find_spec("torch_pruning") is None:
        lines.append(TP_MISSING)
    return lines
