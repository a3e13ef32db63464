"""Issue 18, session 14: the narrow VGG at 2.5x lower measured ORT batch-64 latency, with steadier checks.

Three searches of ``nc_latency_sens`` kept 73.38 / 69.82 / 71.17 % after the same 5-epoch fine-tune (sessions 8
and 10): one loaded timing per round decided which widths were accepted, and the accepted models held 17.84 /
10.40 / 11.58 MMACs for the same ~2.5x. The row here is that search (same cost table in the work folder, same
sensitivity proxy on the validation split, same fine-tune budget, BN recalibration) with the library's three
switches (:mod:`netcompress.pruning.latency_confirm`):

- ``nc_latency_fill``: every end-to-end check the median of ``CONFIRM_ROUNDS`` interleaved rounds against the
  unpruned model; once the target is met, up to ``FILL_UP`` measured widening steps (best proxy regained per
  ms, then MACs per ms) while the median still reaches 2.5x; then the ``FINALISTS`` best met candidates
  re-timed together, the best one within the tolerance kept. Its info lists every check (phase, per-round
  ratios, spread, MACs) and the finalists' re-timing.

Example:
    python benchmarks/pruning.py --latency-mode --models narrow_vgg --latency-rounds 7 \
        --methods nc_latency_fill nc_latency_sens tp_magnitude_at_latency
"""

from __future__ import annotations

from pruning_methods import METHODS, Context, Pruned, with_recalibration
from pruning_recovery import latency_search
from torch import nn

CONFIRM_ROUNDS, FILL_UP, FINALISTS, MAX_ROUNDS = 7, 12, 4, 6
VGG_LATENCY_ROWS = ("nc_latency_fill",)
CHECK_FIELDS = ("round", "phase", "widths", "predicted", "measured", "reduction", "ratios", "spread", "timings",
                "proxy_lost", "macs", "met", "held")  # fmt: skip


@METHODS.register("nc_latency_fill")
def _nc_latency_fill(base: nn.Module, ctx: Context) -> Pruned:
    label = (f"sensitivity proxy (validation), median of {CONFIRM_ROUNDS} rounds per check, fill-up, "
             f"{FINALISTS} finalists re-timed + BN recal.")  # fmt: skip
    small, summary, info = latency_search(
        base, ctx, "nc_latency_fill", label, confirm_rounds=CONFIRM_ROUNDS, fill_up=FILL_UP, finalists=FINALISTS,
        max_rounds=MAX_ROUNDS,
    )  # fmt: skip
    info |= {
        "candidates": [{k: r[k] for k in CHECK_FIELDS if k in r} for r in summary["candidates"]],
        "confirmation": summary["confirmation"], "chosen_round": summary["chosen_round"],
        "rates": summary["rates"], "table_base": summary["cost_table"]["base"],
    }  # fmt: skip
    return with_recalibration(Pruned(small, info=info), ctx)
