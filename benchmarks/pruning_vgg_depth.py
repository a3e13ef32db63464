"""Issue 18, session 16: the narrow VGG at 8x fewer MACs with depth as well as width (``--latency-mode`` rows).

Width pruning alone must take every one of the narrow VGG's 7 convolutions to ~0.35 of its width for 8x;
its three C->C convolutions (conv2 32->32 at 32x32, conv4 64->64 at 16x16, conv6 128->128 at 8x8) cost 9.44 of
43.35 MMACs each. These rows first remove some of them whole (``remove_layers``,
:mod:`netcompress.pruning.layer_removal`: conv + BN + ReLU become identities, and the next convolution is
refit by least squares on 10 training batches to reproduce its old output from the removed layer's input),
recalibrate BN, then prune the widths of what is left to the same 8x budget of the ORIGINAL model's MACs
(``prune_to_target``: uniform group L2, channels x8 where a group has 16+, as ``nc_macs_high``), BN recal.:

- ``nc_macs_high_depth_<tag>``: removal with the least-squares refit, then one-shot widths;
- ``nc_macs_high_depth_<tag>_id``: removal without the refit (the next layer keeps its weights);
- ``nc_macs_high_depth_<tag>_shrink2``: removal with the refit, then the widths faded out over 2 epochs of the
  budget (``shrink_to_target``, any channel count, as ``nc_macs_high_shrink2``), the rest trains the small model.

``<tag>`` names the removed layers among the C->C convolutions: ``c2`` (conv2), ``c24``, ``c246``.
Every row gets the shared fine-tune budget in total and records ``acc_depth_only`` (the accuracy after the
removal and BN recalibration, before any width is pruned) on the run's evaluation split. ``depth_only_<tag>``
(a diagnostic, not an 8x row) fine-tunes the shallower model at full width: what the removal alone costs.

Measured (``RESULTS.md``, issue 18 session 16, validation split): every depth + width row is below Torch-Pruning
(-0.9 to -3.4 points; -7.5 without the refit) and below width alone; the 4-conv model reaches only 70.5 % at full
width after the same 5 epochs, so the removed depth is worth more than the width its MACs buy back.

Example:
    python benchmarks/pruning.py --latency-mode --heldout --models narrow_vgg \
        --methods nc_macs_high_depth_c246 nc_macs_high_depth_c2 tp_magnitude_macs_high
"""

from __future__ import annotations

import copy
import dataclasses

import cifar_protocol as cp
from pruning_methods import METHODS, RECALIBRATE_BN_BATCHES, Context, Pruned, finetune_config, macs_of
from torch import nn

from netcompress.evaluation import evaluate
from netcompress.pruning import prune_to_target, recalibrate_bn
from netcompress.pruning.layer_removal import remove_layers
from netcompress.pruning.soft_shrink import ShrinkSchedule, shrink_to_target

REFIT_BATCHES = 10
FADE_EPOCHS, FADE_EVERY = 2, 10
# which C->C convolutions (1-based among the model's convolutions with in == out, in forward order) each tag drops
TAGS = {"c2": (1,), "c24": (1, 2), "c246": (1, 2, 3)}
VGG_DEPTH_ROWS = (
    *(f"nc_macs_high_depth_{tag}{suffix}" for tag in TAGS for suffix in ("", "_id", "_shrink2")),
    *(f"depth_only_{tag}" for tag in TAGS),
)


def square_convs(model: nn.Module) -> list[str]:
    """Names of the convolutions whose input and output widths match, in module order."""
    return [
        n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == m.out_channels
    ]


def _depth_only(tag: str):
    """A diagnostic, not an 8x row: the removal (with the refit) and BN recalibration, no width pruned."""

    def run(base: nn.Module, ctx: Context) -> Pruned:
        names = [square_convs(base)[i - 1] for i in TAGS[tag]]
        shallow, _ = remove_layers(
            base, ctx.example, names, loader=ctx.train_loader, num_batches=REFIT_BATCHES
        )
        recalibrate_bn(shallow, ctx.train_loader, num_batches=RECALIBRATE_BN_BATCHES)
        label = f"(diagnostic) depth only: {', '.join(names)} removed (least-squares refit of the next conv) + BN recal."
        return Pruned(shallow, info={"label": label, "removed": names})

    return run


def _depth(tag: str, *, refit: bool, fade: bool):
    def run(base: nn.Module, ctx: Context) -> Pruned:
        high = ctx.config.high_mac_reduction
        square = square_convs(base)
        if len(square) < max(TAGS[tag]):
            raise cp.ConfigError(f"{tag}: the model has {len(square)} convolutions with in == out channels")
        names = [square[i - 1] for i in TAGS[tag]]
        shallow, removal = remove_layers(
            base, ctx.example, names, loader=ctx.train_loader if refit else None, num_batches=REFIT_BATCHES
        )
        recalibrate_bn(shallow, ctx.train_loader, num_batches=RECALIBRATE_BN_BATCHES)
        acc_depth_only = evaluate(shallow, ctx.test_loader)["accuracy"]
        budget = macs_of(base, ctx.example) / high
        reduction = macs_of(shallow, ctx.example) / budget
        epochs_used = 0
        if fade:
            epochs_used = min(FADE_EPOCHS, max(ctx.config.finetune_epochs - 1, 1))
            config = dataclasses.replace(finetune_config(ctx, epochs=epochs_used), schedule="constant")
            schedule = ShrinkSchedule(epochs=epochs_used, every=FADE_EVERY, refresh_until=0.5)
            small, summary = shrink_to_target(
                copy.deepcopy(shallow), ctx.example, ctx.train_loader, train_config=config, schedule=schedule,
                target="macs", reduction=reduction, importance="group_l2", method="uniform", round_to=1,
            )  # fmt: skip
            arch = None
        else:
            small, summary = prune_to_target(
                shallow, ctx.example, target="macs", reduction=reduction, importance="group_l2",
                method="uniform", round_to="auto",
            )  # fmt: skip
            arch = summary["architecture"]
        acc_stale = evaluate(small, ctx.test_loader)["accuracy"]
        recalibrate_bn(small, ctx.train_loader, num_batches=RECALIBRATE_BN_BATCHES)
        how = "least-squares refit of the next conv" if refit else "no refit"
        width = (f"widths faded out over {epochs_used} epochs (uniform group L2, any channel count)" if fade
                 else "one-shot widths (uniform group L2, x8)")  # fmt: skip
        label = (f"netcompress depth + width: {', '.join(names)} removed ({how}), {width} "
                 f"at {high:g}x fewer MACs + BN recal.")  # fmt: skip
        refit_errors = None
        if removal["refit"] is not None:
            refit_errors = {r["name"]: [round(r["error_before"], 4), round(r["error_after"], 4)]
                            for r in removal["refit"]["layers"]}  # fmt: skip
        widths = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
        info = {"label": label, "removed": names, "refit_errors": refit_errors, "acc_depth_only": acc_depth_only,
                "macs_depth_only": macs_of(shallow, ctx.example), "width_reduction": reduction, "widths": widths,
                "acc_stale_bn": acc_stale, "arch": arch}  # fmt: skip
        return Pruned(small, epochs_used=epochs_used, info=info)

    return run


for _tag in TAGS:
    METHODS.register(f"nc_macs_high_depth_{_tag}", _depth(_tag, refit=True, fade=False))
    METHODS.register(f"nc_macs_high_depth_{_tag}_id", _depth(_tag, refit=False, fade=False))
    METHODS.register(f"nc_macs_high_depth_{_tag}_shrink2", _depth(_tag, refit=True, fade=True))
    METHODS.register(f"depth_only_{_tag}", _depth_only(_tag))
