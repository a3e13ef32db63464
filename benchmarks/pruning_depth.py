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

from pruning_methods import METHODS, Context, Pruned, with_recalibration
from pruning_recovery import latency_search, row_pruned_model
from torch import nn

from netcompress.distillation import SoftTargetDistillation

KD_ALPHA, KD_TEMPERATURE = 0.5, 4.0
DEPTH_ROWS = ("nc_latency_depth", "nc_latency_depth_kd")


@METHODS.register("nc_latency_depth")
def _nc_latency_depth(base: nn.Module, ctx: Context) -> Pruned:
    label = "depth + width (residual branches removable), sensitivity proxy (validation) + BN recal."
    small, summary, info = latency_search(base, ctx, "nc_latency_depth", label, remove_branches=True)
    table = summary["cost_table"]
    info |= {
        "table_s": round(table["measured_s"], 1), "removed_branches": summary["removed_branches"],
        "rates": summary["rates"], "table_entries": table["entries"], "table_base": table["base"],
    }  # fmt: skip
    for row, searched in zip(info["candidates"], summary["candidates"]):
        row["widths"] = searched["widths"]
    return with_recalibration(Pruned(small, info=info), ctx)


@METHODS.register("nc_latency_depth_kd")
def _nc_latency_depth_kd(base: nn.Module, ctx: Context) -> Pruned:
    pruned = row_pruned_model(base, ctx, "nc_latency_depth", "model")
    teacher = METHODS.get("dense_finetune")(base, ctx).model.eval()  # a copy of the unpruned model
    pruned.hooks = (SoftTargetDistillation(teacher, temperature=KD_TEMPERATURE, alpha=KD_ALPHA),)
    pruned.info["label"] += f" + KD from the unpruned model (T {KD_TEMPERATURE:g}, alpha {KD_ALPHA})"
    return pruned
