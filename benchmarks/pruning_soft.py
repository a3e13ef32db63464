"""Issue 18, session 14: the narrow VGG at 8x fewer MACs with soft, progressive pruning inside the budget.

Registered next to ``pruning_latency.py``'s rows (``--latency-mode --methods ...``); every row gets the shared
``--finetune-epochs`` budget in total (the epochs spent while channels fade count), any channel count and the
fill-up, BN recalibration after the removal:

- ``nc_macs_high_shrink<E>``: ``shrink_to_target`` (:mod:`netcompress.pruning.soft_shrink`): the full-width
  network trains ``E`` epochs (constant fine-tune lr) while the channels ``prune_to_target``'s uniform group-L2
  plan at 8x would remove fade linearly to zero, the plan re-made on the current weights every
  ``SHRINK_EVERY`` steps during the first ``SHRINK_REFRESH`` of the fade (channels no longer chosen regrow);
  then the zero channels are removed and the rest of the budget trains the small model (cosine);
- ``nc_macs_high_shrink<E>_fixed``: the same with the plan made once, on the unpruned weights (not run in session
  14: the refreshed rows never changed their first plan, so this row would train the same model).

Example:
    python benchmarks/pruning.py --latency-mode --models narrow_vgg --methods nc_macs_high_shrink2 \
        tp_magnitude_macs_high
"""

from __future__ import annotations

import copy
import dataclasses

from pruning_methods import METHODS, RECALIBRATE_BN_BATCHES, Context, Pruned, finetune_config, macs_of
from torch import nn

from netcompress.pruning import recalibrate_bn
from netcompress.pruning.soft_shrink import ShrinkSchedule, shrink_to_target

SHRINK_EVERY, SHRINK_REFRESH = 10, 0.5
SHRINK_EPOCHS = (1, 2, 3)
SOFT_ROWS = tuple(f"nc_macs_high_shrink{e}{suffix}" for e in SHRINK_EPOCHS for suffix in ("", "_fixed"))


def _shrink(epochs: int, *, refresh: bool):
    def run(base: nn.Module, ctx: Context) -> Pruned:
        high = ctx.config.high_mac_reduction
        epochs_ = min(epochs, max(ctx.config.finetune_epochs - 1, 1))
        config = dataclasses.replace(finetune_config(ctx, epochs=epochs_), schedule="constant")
        schedule = ShrinkSchedule(
            epochs=epochs_, every=SHRINK_EVERY, refresh_until=SHRINK_REFRESH if refresh else 0.0
        )
        model = copy.deepcopy(base)
        small, summary = shrink_to_target(
            model, ctx.example, ctx.train_loader, train_config=config, schedule=schedule, target="macs",
            reduction=high, importance="group_l2", method="uniform", round_to=1,
        )  # fmt: skip
        recalibrate_bn(small, ctx.train_loader, num_batches=RECALIBRATE_BN_BATCHES)
        how = f"re-chosen every {SHRINK_EVERY} steps" if refresh else "chosen once"
        label = (f"netcompress group L2, uniform, any channel count, channels faded to zero over {epochs_} "
                 f"epoch(s) of the budget ({how}) at {high:g}x fewer MACs + BN recal.")  # fmt: skip
        info = {"label": label, "refreshes": summary["refreshes"],
                "fade_history": summary["history"],
                "reduction_check": macs_of(base, ctx.example) / macs_of(small, ctx.example)}  # fmt: skip
        return Pruned(small, epochs_used=epochs_, info=info)

    return run


for _e in SHRINK_EPOCHS:
    METHODS.register(f"nc_macs_high_shrink{_e}", _shrink(_e, refresh=True))
    METHODS.register(f"nc_macs_high_shrink{_e}_fixed", _shrink(_e, refresh=False))
