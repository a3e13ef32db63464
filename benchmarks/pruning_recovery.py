"""Issue 18, session 8: the latency-mode rows that recover more within the same fine-tune budget.

Registered next to ``pruning_latency.py``'s rows (``--latency-mode --methods ...``); every row still
gets the shared ``--finetune-epochs`` at ``--finetune-lr`` and BN recalibration, as before:

- ``nc_macs_high_fill``: ``prune_to_target(target="macs")`` at ``--high-mac-reduction`` (uniform group L2,
  channels x8) with the library's fill-up, which gives whole 8-channel blocks back while the MAC budget
  holds (the old ``nc_macs_high`` row went to 9.10x for 8x); ``_recon``: ``reconstruct_weights`` refits every
  layer to the unpruned model's outputs on 10 training batches instead of BN recalibration; ``nc_macs_high_fine``:
  the same with any channel count (``round_to=1``, Torch-Pruning's granularity);
- ``nc_macs_high_sens``: the same budget with per-group rates chosen by sensitivity: each group pruned
  alone at the rate grid, accuracy drop measured on ``VALIDATION_BATCHES`` batches of the VALIDATION split
  (``cp.heldout_loader``: training images outside the protocol's subset, never the test set);
- ``nc_latency_sens``: ``prune_to_target(target="latency")`` with the sensitivity proxy on the same
  validation batches instead of the importance proxy;
- ``<row>_kd``: the row fine-tuned with knowledge distillation from the unpruned model (``SoftTargetDistillation``,
  T=4, alpha=0.9 as the rest of the benchmark; a hook in ``Pruned.hooks``), labelled "+ KD".

Example:
    python benchmarks/pruning.py --latency-mode --models narrow_vgg --methods nc_macs_high_fill nc_macs_high_fill_kd
"""

from __future__ import annotations

from typing import Any

import cifar_protocol as cp
from pruning_methods import METHODS, Context, Pruned, kd_hook, with_recalibration, with_reconstruction
from torch import nn

from netcompress.core.io import load_checkpoint
from netcompress.pruning import prune_to_target

# the validation images every sensitivity choice reads: 1,000 (two batches of the protocol's 500); 2,000
# made the narrow VGG's 43 sensitivity evaluations take over 6 minutes at a load average of 8
VALIDATION_IMAGES, VALIDATION_BATCHES = 1000, 2
LATENCY_BATCH = 64
KD_NOTE = " + KD from the unpruned model (T 4, alpha 0.9)"
RECOVERY_ROWS = (
    "nc_macs_high_fill", "nc_macs_high_fine", "nc_macs_high_fill_recon", "nc_macs_high_sens", "nc_latency_sens",
)  # fmt: skip
_VALIDATION: dict[str, Any] = {}


def validation_loader(ctx: Context) -> Any:
    """The validation split for a method's choices: training images outside the protocol's subset."""
    if ctx.protocol.name not in _VALIDATION:
        _VALIDATION[ctx.protocol.name] = cp.heldout_loader(ctx.protocol, size=VALIDATION_IMAGES)
    return _VALIDATION[ctx.protocol.name]


def _macs_high(
    base: nn.Module, ctx: Context, *, strategy: str, reconstruct: bool = False, round_to: int | str = "auto"
) -> Pruned:
    high = ctx.config.high_mac_reduction
    extra = (
        {"loader": validation_loader(ctx), "max_batches": VALIDATION_BATCHES}
        if strategy == "sensitivity"
        else {}
    )
    small, summary = prune_to_target(
        base, ctx.example, target="macs", reduction=high, importance="group_l2", method=strategy,
        round_to=round_to, **extra,
    )  # fmt: skip
    how = "uniform" if strategy == "uniform" else "sensitivity rates (validation split)"
    channels = "channels x8" if round_to == "auto" else "any channel count"
    label = f"netcompress group L2, {how}, {channels} + fill-up at {high:g}x fewer MACs + BN recal."
    info = {"label": label, "arch": summary["architecture"], "rates": summary["rates"],
            "search_macs_reduction": summary["achieved_reduction"], "filled_units": summary["filled_units"]}  # fmt: skip
    if reconstruct:  # refit every layer to the unpruned model's outputs instead of BN recalibration
        info["label"] = label.replace("BN recal.", "weight reconstruction")
        return with_reconstruction(Pruned(small, info=info), base, ctx, summary["kept_indices"])
    return with_recalibration(Pruned(small, info=info), ctx)


@METHODS.register("nc_macs_high_fill_recon")
def _nc_macs_high_fill_recon(base: nn.Module, ctx: Context) -> Pruned:
    return _macs_high(base, ctx, strategy="uniform", reconstruct=True)


@METHODS.register("nc_macs_high_fine")
def _nc_macs_high_fine(base: nn.Module, ctx: Context) -> Pruned:
    return _macs_high(base, ctx, strategy="uniform", round_to=1)


@METHODS.register("nc_macs_high_fill")
def _nc_macs_high_fill(base: nn.Module, ctx: Context) -> Pruned:
    return _macs_high(base, ctx, strategy="uniform")


@METHODS.register("nc_macs_high_sens")
def _nc_macs_high_sens(base: nn.Module, ctx: Context) -> Pruned:
    return _macs_high(base, ctx, strategy="sensitivity")


def latency_search(base: nn.Module, ctx: Context, row: str, label: str, **options: Any) -> tuple[nn.Module, dict, dict]:
    """The sensitivity-proxy latency search of row ``row`` (``options``: more ``prune_to_target`` keywords):
    ``(pruned model, search summary, the row's info)``, the label ``netcompress latency target ...x, <label>``."""
    reduction = ctx.config.latency_reduction
    small, summary = prune_to_target(
        base, ctx.example, target="latency", reduction=reduction, runtime="onnxruntime",
        batch_size=LATENCY_BATCH, threads=ctx.config.timing_threads, importance="group_l2", round_to="auto",
        method="sensitivity", loader=validation_loader(ctx), max_batches=VALIDATION_BATCHES,
        cache_dir=str(ctx.work_dir / "cost_tables"), out_dir=ctx.work_dir / row, **options,
    )  # fmt: skip
    info: dict[str, Any] = {
        "label": f"netcompress latency target {reduction}x (ORT b64), {label}",
        "arch": summary["architecture"], "met": summary["met"], "reason": summary["reason"],
        "search_speedup": summary["achieved_reduction"], "speedup_by_form": summary["speedup_by_form"],
        "search_rounds": len(summary["candidates"]), "table_cached": summary["cost_table"]["cached"],
        "candidates": [{k: r[k] for k in ("round", "predicted", "measured", "reduction", "proxy_lost", "met")}
                       for r in summary["candidates"]],
    }  # fmt: skip
    return small, summary, info


def row_pruned_model(base: nn.Module, ctx: Context, row: str, what: str) -> Pruned:
    """Row ``row``'s own pruned model (run_method's copy: pruned, BN recalibrated, not fine-tuned) when the work
    folder has it, else the row's search run again; ``info["widths_from"]`` says which (``what``: the row's what)."""
    stem = row if ctx.seed == 0 else f"{row}-seed{ctx.seed}"
    kept = ctx.work_dir / f"{stem}.pruned.pt"
    if kept.exists():
        saved = load_checkpoint(kept)
        return Pruned(saved["model"], info={**saved["info"], "widths_from": f"{kept.name} (the row's {what})"})
    # a search under load would not find the same model again: say so in the row
    pruned = METHODS.get(row)(base, ctx)
    pruned.info["widths_from"] = f"a new search (no {row} pruned model in the work folder)"
    return pruned


@METHODS.register("nc_latency_sens")
def _nc_latency_sens(base: nn.Module, ctx: Context) -> Pruned:
    small, _, info = latency_search(base, ctx, "nc_latency_sens", "sensitivity proxy (validation) + BN recal.")
    return with_recalibration(Pruned(small, info=info), ctx)


def _kd(name: str) -> Any:
    def _run(base: nn.Module, ctx: Context) -> Pruned:
        pruned = METHODS.get(name)(base, ctx)
        pruned.hooks = (*pruned.hooks, kd_hook(base))
        pruned.info["label"] += KD_NOTE
        return pruned

    return _run


for _name in (*RECOVERY_ROWS, "nc_latency"):
    METHODS.register(f"{_name}_kd", _kd(_name))
