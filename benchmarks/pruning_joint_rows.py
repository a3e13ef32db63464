"""Issue 18, session 16: the joint width + int8 choice at the CPU protocol, every row measured in its DEPLOYED form.

Registered as latency rows (``pruning.py --latency-mode --methods ...``). A row whose info says
``deploy: "int8"`` is fine-tuned in float like every row, then made int8 (:func:`deploy_int8`: static PTQ with the
layers its plan keeps float left float, calibrated on ``CALIB_BATCHES`` training batches, exported to int8 ONNX and
checked against PyTorch). Its ``acc_after`` / ``acc_val`` / ``acc_val5k`` are that int8 file's accuracy in ONNX
Runtime (``acc_after_float``: the fine-tuned float model's, for reference), and the harness times that int8 file
against the unpruned FLOAT ORT model in the same interleaved rounds (``deployed_form`` says which file a row is).

- ``nc_latency_joint``: ``nc_latency_fill``'s search (sensitivity proxy on the 1,000-image validation split, median
  of ``CONFIRM_ROUNDS`` rounds per check, fill-up, finalists) with ``quantize="joint"``: widths AND int8/float per
  layer against the measured int8 ORT graph; BN recalibration, the shared fine-tune, then int8 as planned;
- ``nc_int8_only``: no pruning and no fine-tune: the baseline, every layer static int8 (same calibration): how
  much of the speed-up int8 alone gives;
- ``tp_magnitude_at_latency_int8``: Torch-Pruning's ratio bisected (median-of-``CONFIRM_ROUNDS`` checks) until its
  int8 ORT file (our PTQ, every layer) reaches the target; fine-tuned as TP ships (no BN recalibration, like
  ``tp_magnitude_at_latency_median``), then our PTQ: "Torch-Pruning, then quantize".

Example:
    python benchmarks/pruning.py --latency-mode --models narrow_vgg --latency-rounds 15 --timing-threads 1 \
        --methods nc_latency_joint nc_int8_only tp_magnitude_at_latency_int8 nc_latency_fill
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import cifar_protocol as cp
from pruning_methods import METHODS, Context, Pruned, with_recalibration
from pruning_recovery import VALIDATION_BATCHES, validation_loader
from pruning_vgg_latency import CHECK_FIELDS, CONFIRM_ROUNDS, FILL_UP, FINALISTS, MAX_ROUNDS, tp_at_latency
from torch import nn

from netcompress.evaluation import evaluate
from netcompress.export import OrtModel, export_onnx
from netcompress.pruning.latency_confirm import retime
from netcompress.pruning.latency_joint import int8_model, quantize_plan
from netcompress.quantization.modules import quant_layers, quantizers

JOINT_ROWS = ("nc_latency_joint", "nc_int8_only", "tp_magnitude_at_latency_int8")
INT8_FORM, FLOAT_FORM = "int8 ORT", "float ORT"
HELDOUT_IMAGES = 5000  # the steadier validation split (cp.heldout_loader; the 1,000 split is a subset of it)
_HELDOUT: dict[str, Any] = {}


def is_int8(model: nn.Module) -> bool:
    """A fake-quantized model (the int8 deployed form of a row): its eager PyTorch timing means nothing."""
    return bool(quantizers(model))


def heldout_loader(ctx: Context) -> Any:
    """The 5,000 held-out training images (outside the protocol's subset): the validation split rows are compared on."""
    if ctx.protocol.name not in _HELDOUT:
        _HELDOUT[ctx.protocol.name] = cp.heldout_loader(ctx.protocol, size=HELDOUT_IMAGES)
    return _HELDOUT[ctx.protocol.name]


def int8_file(qmodel: nn.Module, ctx: Context, name: str, folder: Path) -> tuple[OrtModel, dict[str, Any]]:
    """``qmodel`` exported to ``folder/<name>.int8.onnx`` (ONNX Runtime's int8 graph, checked against PyTorch
    within the int8 tolerance: a mismatch raises) and loaded in ONNX Runtime at the run's timing threads."""
    int8 = is_int8(qmodel)  # a joint plan may keep every layer float: then its file is the float one
    path = folder / f"{name}.{'int8' if int8 else 'float'}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = export_onnx(qmodel, path, ctx.example, int8=int8, check=True)
    return OrtModel(path, threads=ctx.config.timing_threads), report


def deploy_int8(
    model: nn.Module, info: dict[str, Any], ctx: Context, name: str
) -> tuple[nn.Module, dict[str, Any]]:
    """The fine-tuned float ``model`` made int8 as ``info["precision"]`` plans it (calibrated on training batches);
    returns (the fake-quantized model, the row fields measured on its int8 ONNX Runtime file: the accuracies on the
    test set, the 1,000-image and the 5,000-image validation splits, the int8 layers and file)."""
    plan = {"precision": {"float": list(info["precision"].get("float", []))}}
    qmodel = quantize_plan(model, plan, ctx.train_loader, ctx.example, check=False).eval()
    ort, report = int8_file(qmodel, ctx, name, ctx.work_dir / "int8")
    fields = {
        "deployed_form": INT8_FORM if is_int8(qmodel) else f"{FLOAT_FORM} (the plan keeps every layer float)",
        "acc_after": evaluate(ort, ctx.test_loader)["accuracy"],
        "acc_val": evaluate(ort, validation_loader(ctx))["accuracy"],
        "acc_val5k": evaluate(ort, heldout_loader(ctx))["accuracy"],
        "int8_layers": len(quant_layers(qmodel)),
        "float_layers": plan["precision"]["float"],
        "int8_file_bytes": report["size_bytes"],
        "int8_ops": report.get("int8_op_counts", {}),
        "export_check": {k: report["check"][k] for k in ("max_abs_diff", "top1_agreement") if k in report["check"]},
    }  # fmt: skip
    return qmodel, fields


def _spec(ctx: Context) -> Any:
    from pruning_latency import _spec as spec  # imported here: pruning_latency imports this module

    return spec(ctx)


@METHODS.register("nc_latency_joint")
def _nc_latency_joint(base: nn.Module, ctx: Context) -> Pruned:
    from netcompress.pruning.auto import AutoPruneConfig, _search

    reduction = ctx.config.latency_reduction
    config = AutoPruneConfig.from_dict(
        {"target": "latency", "reduction": reduction, "runtime": "onnxruntime", "batch_size": 64,
         "threads": ctx.config.timing_threads, "importance": "group_l2", "round_to": "auto", "strategy": "sensitivity",
         "max_batches": VALIDATION_BATCHES, "quantize": "joint", "confirm_rounds": CONFIRM_ROUNDS, "fill_up": FILL_UP,
         "finalists": FINALISTS, "max_rounds": MAX_ROUNDS, "cache_dir": str(ctx.work_dir / "cost_tables")},
        where="nc_latency_joint",
    )  # fmt: skip
    # the search's float pruned model (prune_to_target would return it int8 already: it is fine-tuned in float first)
    small, summary = _search(base, ctx.example, config, loader=validation_loader(ctx), calib=ctx.train_loader,
                             out_dir=ctx.work_dir / "nc_latency_joint", seed=0)  # fmt: skip
    plan = summary["precision"]
    label = (f"netcompress latency target {reduction}x, widths + int8/float per layer (joint, int8 ORT file), "
             f"sensitivity proxy (validation), median of {CONFIRM_ROUNDS} rounds per check, fill-up, {FINALISTS} "
             "finalists + BN recal.")  # fmt: skip
    info: dict[str, Any] = {
        "label": label, "deploy": "int8", "arch": summary["architecture"], "met": summary["met"],
        "reason": summary["reason"], "search_speedup": summary["achieved_reduction"],
        "speedup_by_form": summary["speedup_by_form"], "search_rounds": len(summary["candidates"]),
        "precision": {k: plan[k] for k in ("int8", "float", "reasons", "layers", "boundary_ms")},
        "candidates": [{k: r[k] for k in (*CHECK_FIELDS, "int8_layers") if k in r} for r in summary["candidates"]],
        "confirmation": summary["confirmation"], "chosen_round": summary["chosen_round"], "rates": summary["rates"],
        "table_base": summary["cost_table"]["base"], "trajectory": summary["trajectory"],
    }  # fmt: skip
    return with_recalibration(Pruned(small, info=info), ctx)


@METHODS.register("nc_int8_only")
def _nc_int8_only(base: nn.Module, ctx: Context) -> Pruned:
    label = "unpruned, every layer static int8 (PTQ on training batches), no fine-tune"
    info = {"label": label, "deploy": "int8", "precision": {"float": []}}
    # the whole budget counted as spent: the baseline is quantized as trained (its 15 epochs)
    return Pruned(copy.deepcopy(base), epochs_used=ctx.config.finetune_epochs, info=info)


def int8_speedup(base: nn.Module, model: nn.Module, ctx: Context) -> float:
    """Unpruned FLOAT ORT / ``model``'s int8 ORT batch-64 latency: the median of ``CONFIRM_ROUNDS`` interleaved
    per-round ratios (the int8 file's ranges from the example batch: they do not change the graph)."""
    timed = retime(base, {"pruned": int8_model(model, [ctx.example], fast=True)}, ctx.example, _spec(ctx),
                   CONFIRM_ROUNDS)  # fmt: skip
    return timed["pruned"]["ratio"]


@METHODS.register("tp_magnitude_at_latency_int8")
def _tp_at_latency_int8(base: nn.Module, ctx: Context) -> Pruned:
    model, found = tp_at_latency(base, ctx, int8_speedup)
    label = (f"Torch-Pruning MagnitudeImportance p=2, ratio tuned so its int8 ORT file (our PTQ) reaches "
             f"{ctx.config.latency_reduction}x ORT b64 (median of {CONFIRM_ROUNDS} rounds per step), then int8")  # fmt: skip
    return Pruned(model, info={"label": label, "deploy": "int8", "precision": {"float": []}, **found})


def joint_checks(rows: list[dict[str, Any]], target: float, accuracy: Any) -> list[str]:
    """The issue's three targets for the int8 rows that are not ``nc_latency*`` (those get the shared checks)."""
    by = {r["method"]: r for r in rows}
    lines = []
    for row in (
        r for r in rows if r.get("deployed_form") == INT8_FORM and not r["method"].startswith("nc_latency")
    ):
        got = row["ort_speedup_b64"]
        drop = 100 * (accuracy(by["unpruned"]) - accuracy(row))
        lines.append(f"{row['method']} ({INT8_FORM} vs unpruned float ORT): {got:.2f}x for {target}x (met within "
                     f"5 %: {'PASS' if got >= target / 1.05 else 'MISS'}); {abs(drop):.2f} points "
                     f"{'below' if drop >= 0 else 'above'} unpruned "
                     f"(target <= 1: {'PASS' if drop <= 1 else 'MISS'})")  # fmt: skip
    return lines
