"""Semi-structured N:M sparsity: in every group of M consecutive input weights of an output, keep N.

The pattern sparse tensor cores run (2:4 on NVIDIA Ampere and later: half the multiply-adds, with a
small index per group). Groups run along the input dimension of the weight matrix: a Linear's
``(out, in)`` weight, a convolution's weight seen as ``(out, in * kh * kw)``. Importance is
``magnitude`` (|W|) or ``wanda`` (|W_ij| * ||X_j||_2, the weight times the norm of its input feature
over the calibration data, measured layer by layer on the model pruned upstream; Sun et al. 2023).

The pattern is stored as the usual boolean ``weight_mask`` (:mod:`netcompress.pruning.masks`), so it
holds through any training loop (``fit``, momentum, weight decay), ``state_dict``, ``deepcopy`` and
saving. A layer whose input size is not a multiple of M is skipped and named in the summary.

Example:
    >>> summary = prune_n_m_(model, n=2, m=4)
    >>> summary["per_layer"]["fc1"], summary["skipped"]
    (0.5, {'conv1': 'input size 27 is not a multiple of m=4'})
    >>> prune_n_m_(bert, loader, importance="wanda", exclude=["re:pooler.*"])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from netcompress.core.config import check_choice
from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, Result, apply, register_method
from netcompress.pruning.layerwise import (
    InputStats,
    LayerSelection,
    calibration_batches,
    prune_layerwise,
    select_layers,
    sparsity_summary,
)
from netcompress.pruning.sparse_storage import write_sparse
from netcompress.pruning.weight_targets import WeightTarget

IMPORTANCE = ("magnitude", "wanda")


def check_n_m(n: Any, m: Any) -> None:
    """Raise a ConfigError naming ``n`` or ``m`` unless ``1 <= n < m``."""
    for key, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be a whole number")
    if m < 2:
        raise ConfigError(f"m={m} must be at least 2 (the size of a group of weights)")
    if not 1 <= n < m:
        raise ConfigError(f"n={n} must be within [1, m-1] = [1, {m - 1}] (keep n of every m={m} weights)")


def n_m_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean keep-mask of a 2-D ``scores`` (out, in): the N highest of every M consecutive columns.

    Example:
        >>> n_m_keep(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 2, 4).tolist()
        [[True, False, True, False]]
    """
    rows, cols = scores.shape
    if cols % m:
        raise ConfigError(f"input size {cols} is not a multiple of m={m}")
    groups = scores.reshape(rows, cols // m, m)
    top = torch.topk(groups, n, dim=-1).indices
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device).scatter_(-1, top, True)
    return keep.reshape(rows, cols)


def live_scores(target: WeightTarget, scores: torch.Tensor) -> torch.Tensor:
    """``scores`` (as the ``(out, in)`` matrix) with already-pruned weights ranked below every live one."""
    keep = target.keep()
    if keep is None:
        return scores
    return scores.masked_fill(~keep.to(scores.device), float("-inf"))


def wanda_scores(target: WeightTarget, stats: InputStats) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 on the ``(out, in)`` matrix (in along the input features), already-pruned lowest."""
    weight = target.matrix().to(torch.float64)
    return live_scores(target, weight.abs() * stats.norms.to(weight.device).unsqueeze(0))


def magnitude_scores(target: WeightTarget) -> torch.Tensor:
    return live_scores(target, target.matrix().abs().to(torch.float64))


def mask_n_m_(target: WeightTarget, scores: torch.Tensor, n: int, m: int) -> None:
    """Mask the target IN PLACE to the N:M pattern chosen by ``scores`` (combined with its mask)."""
    target.set_keep(n_m_keep(scores, n, m))


@dataclasses.dataclass
class NMConfig(LayerSelection):
    """``prune/n_m``: keep ``n`` of every ``m`` consecutive input weights of each selected layer.

    ``importance``: ``magnitude`` (no data) or ``wanda`` (reads ``calib_batches`` calibration batches,
    layer by layer). Layers whose input size (in * kernel) is not a multiple of ``m`` are skipped.

    Example:
        >>> nc.apply(model, NMConfig(n=2, m=4, exclude=["classifier"])).summary["global_sparsity"]
        0.5
    """

    n: int = 2
    m: int = 4
    importance: str = "magnitude"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_n_m(self.n, self.m)
        check_choice("importance", self.importance, IMPORTANCE)


def _split_by_width(
    layers: dict[str, WeightTarget], m: int | None
) -> tuple[dict[str, WeightTarget], dict[str, str]]:
    """Targets whose input size (in * kernel) is a multiple of ``m``, and the others with the reason."""
    fits, skipped = {}, {}
    for name, target in layers.items():
        cols = target.matrix().shape[1]
        if m is not None and cols % m:
            skipped[target.key] = f"input size {cols} is not a multiple of m={m}"
        else:
            fits[name] = target
    return fits, skipped


def select_n_m(model: nn.Module, config: LayerSelection, m: int | None, *, method: str) -> tuple[dict, dict]:
    """The selected layers an N:M pattern fits (all for ``m=None``) and the rest with the reason."""
    selected, skipped = select_layers(model, config, method=method)
    layers, narrow = _split_by_width(selected, m)
    skipped.update(narrow)
    if not layers:
        raise ConfigError(f"{method}: no selected layer can be pruned; skipped: {skipped}")
    return layers, skipped


def n_m_prune_(model: nn.Module, config: NMConfig, loader: Iterable | None = None) -> dict[str, Any]:
    """The algorithm of ``prune/n_m``: mask ``model`` IN PLACE, return the summary."""
    method = "prune/n_m"
    layers, skipped = select_n_m(model, config, config.m, method=method)
    if config.importance == "magnitude":
        for target in layers.values():
            mask_n_m_(target, magnitude_scores(target), config.n, config.m)
        pruned, batches, path = layers, 0, {"calibration": "none"}
    else:
        data = calibration_batches(loader, config.calib_batches, method=method)

        def prune(name: str, target: WeightTarget, stats: InputStats) -> dict[str, Any]:
            mask_n_m_(target, wanda_scores(target, stats), config.n, config.m)
            return {}

        done, more, path = prune_layerwise(model, layers, data, prune=prune, calibration=config.calibration)
        skipped.update(more)
        pruned, batches = {name: layers[name] for name in layers if name in done}, len(data)
    return sparsity_summary(
        model, pruned, skipped, method="n_m", pattern=f"{config.n}:{config.m}",
        importance=config.importance, calib_batches=batches, **path,
    )  # fmt: skip


@register_method("prune", "n_m", config=NMConfig)
def n_m(model: nn.Module, config: NMConfig, data: MethodData) -> Result:
    """Semi-structured N:M sparsity (2:4 by default) through masks, by magnitude or Wanda scores."""
    loader = data.calibration if config.importance == "wanda" else None
    summary = n_m_prune_(model, config, loader)
    return Result(model=model, summary=write_sparse(model, summary, data.out_dir, save=config.save_sparse))


def prune_n_m_(
    model: nn.Module,
    loader: Iterable | None = None,
    *,
    n: int = NMConfig.n,
    m: int = NMConfig.m,
    importance: str = NMConfig.importance,
    calib_batches: int = LayerSelection.calib_batches,
    include: list[str] | None = None,
    exclude: list[str] | tuple[str, ...] = (),
    calibration: str = LayerSelection.calibration,
    config: NMConfig | None = None,
) -> dict[str, Any]:
    """Mask ``model`` IN PLACE to N:M sparsity (``prune/n_m``); return the summary.

    ``loader`` gives the calibration batches (tensors, tuples or dicts of model inputs, with or
    without targets) that ``importance="wanda"`` needs. ``config`` replaces the keywords.

    Example:
        >>> s = prune_n_m_(model, n=2, m=4, exclude=["classifier"])
        >>> s["pattern"], s["global_sparsity"]
        ('2:4', 0.5)
    """
    if config is None:
        fields = {
            "n": n, "m": m, "importance": importance, "calib_batches": calib_batches,
            "include": include, "exclude": list(exclude), "calibration": calibration,
        }  # fmt: skip
        config = NMConfig.from_dict(fields, where="prune_n_m_")
    return apply(model, config, MethodData(calib_loader=loader)).summary
