"""Issue 18, session 13: depth as well as width under the latency target (``--latency-mode`` rows).

ResNet-20's 2.5x lower ORT batch-64 latency needs its memory-bound 32x32 stage cheaper; width pruning alone
took the stage-1 residual stream to 4 channels (session 10: 62.04 % after 5 epochs, 5.81 below unpruned).
These rows let the search also remove whole residual branches with an identity shortcut
(``prune_to_target(..., remove_branches=True)``, :mod:`netcompress.pruning.branch_removal`): the block keeps
its shortcut and the stream keeps its width. Every row gets the shared fine-tune budget and BN recalibration:

- ``nc_latency_depth``: the latency search (sensitivity proxy on the validation split, as ``nc_latency_sens``)
  with branch removal on offer;
- ``nc_latency_depth_kd``: the SAME pruned model (``nc_latency_depth.pruned.pt``, so both rows compare the
  fine-tune alone) fine-tuned with soft-target KD from the unpruned model at ``KD_ALPHA`` (T 4);

Every row here also records ``acc_val``, its accuracy on the validation split (``validation_loader``): the
choice between them is made on it, never on the test accuracy.

Example:
    python benchmarks/pruning.py --latency-mode --models resnet20 \
        --methods nc_latency_depth nc_latency_depth_kd tp_magnitude_at_latency
"""

from __future__ import annotations

from typing import Any

from pruning_methods import METHODS, Context, Pruned, with_recalibration
from pruning_recovery import LATENCY_BATCH, VALIDATION_BATCHES, validation_loader
from torch import nn

from netcompress.core.io import load_checkpoint
from netcompress.distillation import SoftTargetDistillation
from netcompress.pruning import prune_to_target

KD_ALPHA, KD_TEMPERATURE = 0.5, 4.0
DEPTH_ROWS = ("nc_latency_depth", "nc_latency_depth_kd")


@METHODS.register("nc_latency_depth")
def _nc_latency_depth(base: nn.Module, ctx: Context) -> Pruned:
    reduction = ctx.config.latency_reduction
    small, summary = prune_to_target(
        base, ctx.example, target="latency", reduction=reduction, runtime="onnxruntime",
        batch_size=LATENCY_BATCH, threads=ctx.config.timing_threads, importance="group_l2", round_to="auto",
        method="sensitivity", loader=validation_loader(ctx), max_batches=VALIDATION_BATCHES,
        remove_branches=True, cache_dir=str(ctx.work_dir / "cost_tables"),
        out_dir=ctx.work_dir / "nc_latency_depth",
    )  # fmt: skip
    info: dict[str, Any] = {
        "label": f"netcompress latency target {reduction}x (ORT b64), depth + width (residual branches "
                 "removable), sensitivity proxy (validation) + BN recal.",
        "arch": summary["architecture"], "met": summary["met"], "reason": summary["reason"],
        "search_speedup": summary["achieved_reduction"], "speedup_by_form": summary["speedup_by_form"],
        "search_rounds": len(summary["candidates"]), "table_cached": summary["cost_table"]["cached"],
        "table_s": round(summary["cost_table"]["measured_s"], 1),
        "removed_branches": summary["removed_branches"], "rates": summary["rates"],
        "candidates": [{k: r[k] for k in ("round", "predicted", "measured", "reduction", "proxy_lost", "met")}
                       | {"widths": r["widths"]} for r in summary["candidates"]],
        "table_entries": summary["cost_table"]["entries"], "table_base": summary["cost_table"]["base"],
    }  # fmt: skip
    return with_recalibration(Pruned(small, info=info), ctx)


@METHODS.register("nc_latency_depth_kd")
def _nc_latency_depth_kd(base: nn.Module, ctx: Context) -> Pruned:
    stem = "nc_latency_depth" if ctx.seed == 0 else f"nc_latency_depth-seed{ctx.seed}"
    kept = ctx.work_dir / f"{stem}.pruned.pt"  # run_method's copy: pruned, BN recalibrated, not fine-tuned
    if kept.exists():
        saved = load_checkpoint(kept)
        pruned = Pruned(
            saved["model"], info={**saved["info"], "widths_from": f"{kept.name} (the row's model)"}
        )
    else:  # a search under load would not find the same model again: say so in the row
        pruned = METHODS.get("nc_latency_depth")(base, ctx)
        pruned.info["widths_from"] = "a new search (no nc_latency_depth pruned model in the work folder)"
    teacher = METHODS.get("dense_finetune")(base, ctx).model.eval()  # a copy of the unpruned model
    pruned.hooks = (SoftTargetDistillation(teacher, temperature=KD_TEMPERATURE, alpha=KD_ALPHA),)
    pruned.info["label"] += f" + KD from the unpruned model (T {KD_TEMPERATURE:g}, alpha {KD_ALPHA})"
    return pruned
