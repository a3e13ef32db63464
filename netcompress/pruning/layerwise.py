"""Layer-by-layer calibration for one-shot pruning (Wanda, SparseGPT, N:M with Wanda scores).

:func:`prune_layerwise` prunes the selected weights (:mod:`netcompress.pruning.weight_targets`: Linear,
Conv, GPT-2's Conv1D, nn.MultiheadAttention's in/out projections) in the order the model calls them, each
on inputs from the model already pruned upstream, keeping only statistics of the inputs
(:class:`~netcompress.pruning.layer_inputs.InputStats`: per-feature norms, ``X^T X`` when asked).

Two paths give the same result:

- ``blocks`` (:mod:`netcompress.pruning.block_calibration`): the inputs of each transformer block (or
  sequential stage) are captured once and the pruned block's outputs feed the next block, so every block
  runs a number of times linear in the depth (the SparseGPT/Wanda reference procedure);
- ``model``: one whole-model pass per group of weights (the fallback when no blocks are found; quadratic
  in depth). The summary's ``calibration`` says which ran and ``calibration_note`` why not blocks.

Models are called with tensors, tuples or dicts (:func:`netcompress.core.inputs.call_model`).

Example:
    >>> batches = calibration_batches(loader, 8, method="prune/wanda")
    >>> def prune(name, target, stats):
    ...     return {"rows": stats.rows}
    >>> targets, _ = select_layers(model, config, method="prune/wanda")
    >>> done, skipped, path = prune_layerwise(model, targets, batches, prune=prune)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from netcompress.core.config import Config, check_choice, check_fraction, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.inputs import batch_inputs, call_model, move_inputs
from netcompress.evaluation.harness import eval_mode
from netcompress.export.onnx_trace import no_mha_fastpath
from netcompress.pruning.block_calibration import BlockPlan, plan_blocks, prune_blocks
from netcompress.pruning.layer_inputs import InputStats, probe, prune_groups
from netcompress.pruning.masks import enforce_masks, recurrent_weights, sparsity_report
from netcompress.pruning.weight_targets import (
    WeightTarget,
    module_target,
    select_targets,
    why_not_calibrated,
)

__all__ = ["InputStats", "LayerSelection", "WeightTarget", "calibration_batches", "prune_layerwise"]

CALIBRATION = ("auto", "blocks", "model")


@dataclasses.dataclass
class LayerSelection(Config):
    """Which weights a one-shot method prunes and how much calibration data it reads (shared fields).

    ``include`` (None = every Conv1d/2d/3d/Linear/Conv1D layer and attention projection) and ``exclude``
    hold names or ``re:`` patterns (``"0.self_attn.in_proj_weight"`` for a packed attention projection);
    ``calib_batches`` batches of the calibration loader are used; ``calibration`` is ``auto`` (block by
    block when the model's blocks are found, else whole-model passes), ``blocks`` or ``model``; a recipe
    step given a folder writes the masked weights there as ``sparse.ncz`` when ``save_sparse``.
    """

    include: list[str] | None = None
    exclude: list[str] = dataclasses.field(default_factory=list)
    calib_batches: int = 8
    calibration: str = "auto"
    save_sparse: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.include, str) or isinstance(self.exclude, str):
            raise ConfigError("include/exclude must be lists of layer names or 're:' patterns, not a string")
        self.exclude = list(self.exclude)
        self.include = None if self.include is None else list(self.include)
        check_range("calib_batches", self.calib_batches, 1)
        check_choice("calibration", self.calibration, CALIBRATION)


def check_amount(amount: Any) -> None:
    """Raise a ConfigError naming ``amount`` unless it is a number in [0, 1)."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise ConfigError(f"amount={amount!r} must be a number in [0, 1)")
    check_fraction("amount", amount)


def select_layers(
    model: nn.Module, config: LayerSelection, *, method: str
) -> tuple[dict[str, WeightTarget], dict[str, str]]:
    """The selected weights as :class:`WeightTarget` by name, and those set aside with the reason.

    Selecting nothing is an error naming ``method``.

    Example:
        >>> targets, skipped = select_layers(model, NMConfig(), method="prune/n_m")
    """
    return select_targets(model, config.include, config.exclude, method=method)


def calibration_batches(loader: Iterable | None, calib_batches: int, *, method: str) -> list[Any]:
    """The model inputs of the first ``calib_batches`` batches of ``loader`` (an error naming the key if none).

    Example:
        >>> len(calibration_batches(loader, 4, method="prune/wanda"))
        4
    """
    if loader is None:
        raise ConfigError(
            f"{method} needs calibration data: calib_loader (or train_loader) is None; "
            "pass a loader of model inputs (calib_batches of them are used)"
        )
    batches = []
    for batch in loader:
        if len(batches) >= calib_batches:
            break
        batches.append(batch_inputs(batch))
    if not batches:
        raise ConfigError(f"{method}: calib_loader yielded no batches (calib_batches={calib_batches})")
    return batches


def weight_matrix(layer: nn.Module | WeightTarget) -> torch.Tensor:
    """The weight as (out, in * kernel): the matrix the layer multiplies its input rows with."""
    if isinstance(layer, WeightTarget):
        return layer.matrix()
    return module_target("layer", layer).matrix()


@contextlib.contextmanager
def no_cache(model: nn.Module) -> Iterator[None]:
    """Hugging Face models run without a key/value cache (``config.use_cache=False``) while calibrating.

    A cache object would grow with every replayed block call; none is needed for one forward.
    """
    configs = {
        id(c): c
        for m in model.modules()
        if getattr(c := getattr(m, "config", None), "use_cache", False) is True
    }
    for config in configs.values():
        config.use_cache = False
    try:
        yield
    finally:
        for config in configs.values():
            config.use_cache = True


PruneFn = Callable[[str, Any, InputStats], dict[str, Any]]


def prune_layerwise(
    model: nn.Module,
    layers: dict[str, nn.Module | WeightTarget],
    batches: list[Any],
    *,
    prune: PruneFn,
    gram: bool = False,
    calibration: str = "auto",
) -> tuple[dict[str, dict[str, Any]], dict[str, str], dict[str, Any]]:
    """Prune ``layers`` one group at a time, each on inputs from the model already pruned upstream.

    ``layers`` maps names to Linear/Conv/Conv1D modules or :class:`WeightTarget`; ``prune(name, layer,
    stats)`` masks (and may update) one of them and returns its summary entry. ``calibration``: ``"auto"``
    (block by block when the blocks are found, :mod:`netcompress.pruning.block_calibration`, else whole-model
    passes), ``"blocks"`` (an error naming the reason when they are not) or ``"model"``. Returns ``(entries
    by name, skipped layers with the reason, {"calibration": "blocks" | "model", ...})``.

    Example:
        >>> done, skipped, path = prune_layerwise(model, layers, batches, prune=my_prune, gram=True)
        >>> path
        {'calibration': 'blocks', 'calibration_blocks': 'encoder.layer (2 blocks)'}
    """
    check_choice("calibration", calibration, CALIBRATION)
    targets = {n: v if isinstance(v, WeightTarget) else module_target(n, v) for n, v in layers.items()}
    skipped: dict[str, str] = {}
    usable = {}
    for name, target in targets.items():
        reason = why_not_calibrated(target)
        if reason is None:
            usable[name] = target
        else:
            skipped[target.key] = reason
    done: dict[str, dict[str, Any]] = {}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches = [move_inputs(inputs, device) for inputs in batches]

    def prune_one(name: str, stats: InputStats) -> dict[str, Any]:
        return prune(name, layers[name], stats)

    def run(inputs: Any) -> Any:
        return call_model(model, inputs)

    with eval_mode(model), no_mha_fastpath(), no_cache(model):
        plan = (
            plan_blocks(model, usable, batches[0])
            if calibration != "model" and usable
            else "model path asked for"
        )
        if isinstance(plan, BlockPlan):
            calls = plan.calls
            path = {
                "calibration": "blocks",
                "calibration_blocks": f"{plan.container} ({len(plan.blocks)} blocks)",
            }
        elif calibration == "blocks":
            raise ConfigError(f"calibration='blocks': the model cannot be calibrated block by block: {plan}")
        else:
            groups, calls, _ = probe(run, batches[0], usable)
            path = {"calibration": "model", "calibration_note": plan}
        for name, target in usable.items():
            if name not in calls:
                skipped[target.key] = (
                    "never called as a module during calibration (its weight is used directly)"
                )
        if isinstance(plan, BlockPlan):
            prune_blocks(model, plan, usable, batches, prune=prune_one, gram=gram, done=done)
        else:
            prune_groups(groups, usable, calls, batches, run, prune=prune_one, gram=gram, done=done)
    return done, skipped, path


@torch.no_grad()
def sparsity_summary(
    model: nn.Module, pruned: dict[str, WeightTarget], skipped: dict[str, str], **fields: Any
) -> dict[str, Any]:
    """The one-shot methods' summary: sparsity per pruned weight, skipped ones with the reason, totals.

    ``per_layer`` keys are the weights' names (``sparsity_report`` keys: ``"fc"``, ``"h.0.attn.c_attn"``,
    ``"0.self_attn.in_proj_weight"``).

    Example:
        >>> sparsity_summary(model, targets, {"conv": "..."}, method="n_m")["per_layer"]
        {'fc': 0.5}
    """
    for module in model.modules():
        enforce_masks(module)
    report = sparsity_report(model)
    params = {(id(t.owner), t.param): t.weight for t in pruned.values()}
    selected = sum(w.numel() for w in params.values())
    zeros = sum(int(w.numel() - torch.count_nonzero(w)) for w in params.values())
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    keys = dict.fromkeys(t.key for t in pruned.values())
    skipped = {**skipped, **_dense_stacked_weights(model, {id(w) for w in params.values()}, skipped)}
    return {
        **fields,
        "per_layer": {key: report["per_layer"][key] for key in keys},
        "skipped": dict(skipped),
        "global_sparsity": zeros / max(1, selected),
        "selected_params": selected,
        "zero_params": zeros,
        "params": total,
        "nonzero_params": nonzero,
        "model_sparsity": report["global"],
    }


def _dense_stacked_weights(model: nn.Module, covered: set[int], skipped: dict[str, str]) -> dict[str, str]:
    """3-D+ weights outside convolutions that nothing pruned (Mixtral's fused ``experts.gate_up_proj``): named,
    so a summary never hides that most of a mixture-of-experts model stayed dense."""
    found = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            continue
        for p_name in recurrent_weights(module):
            key = f"{mod_name}.{p_name}" if mod_name else p_name
            if key not in skipped:
                found[key] = (
                    f"a weight of {type(module).__name__} (recurrent), not a Linear/Conv weight: left dense"
                )
        for p_name, param in module.named_parameters(recurse=False):
            key = f"{mod_name}.{p_name}" if mod_name else p_name
            if param.dim() >= 3 and id(param) not in covered and key not in skipped:
                found[key] = (
                    f"a {param.dim()}-D weight of {type(module).__name__} (stacked, e.g. mixture-of-experts), "
                    "not a Linear/Conv weight: left dense"
                )
    return found
