"""One-shot pruning for LLM-style models, without retraining: Wanda and SparseGPT.

Both read a few calibration batches and prune layer by layer (:func:`~netcompress.pruning.layerwise.prune_layerwise`):
each layer's inputs come from the model already pruned upstream, and only statistics of the inputs are
kept (per-feature norms for Wanda, ``X^T X`` for SparseGPT), never the inputs.

- ``prune/wanda`` (Sun et al. 2023): score ``|W_ij| * ||X_j||_2``; in every output row (the paper's
  comparison group) the ``amount`` share of lowest scores is masked. No weight update.
- ``prune/sparsegpt`` (Frantar & Alistarh 2023): masks chosen and the surviving weights updated so the
  layer's output on the calibration data changes least (:mod:`netcompress.pruning.sparsegpt`);
  unstructured (``amount``) or semi-structured (``n``/``m``). The summary gives each layer's relative
  output error ``||X (W' - W)^T|| / ||X W^T||``.

The masks are ordinary ``weight_mask`` buffers (:mod:`netcompress.pruning.masks`): fine-tuning keeps them.

Example:
    >>> summary = prune_sparsegpt_(model, calib_loader, amount=0.5, exclude=["re:classifier"])
    >>> summary["per_layer"], summary["errors"]
    >>> prune_wanda_(bert, [{"input_ids": ids, "attention_mask": mask}], amount=0.5)["global_sparsity"]
    0.5
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from netcompress.core.config import check_range
from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, Result, apply, register_method
from netcompress.pruning.layerwise import (
    InputStats,
    LayerSelection,
    calibration_batches,
    check_amount,
    prune_layerwise,
    sparsity_summary,
)
from netcompress.pruning.semi_structured import check_n_m, select_n_m, wanda_scores
from netcompress.pruning.sparse_storage import write_sparse
from netcompress.pruning.sparsegpt import sparsegpt_prune
from netcompress.pruning.weight_targets import WeightTarget


@dataclasses.dataclass
class WandaConfig(LayerSelection):
    """``prune/wanda``: mask ``amount`` of every output row by |W| * input-feature norm, layer by layer.

    Example:
        >>> nc.apply(model, WandaConfig(amount=0.5), MethodData(calib_loader=loader)).summary["per_layer"]
    """

    amount: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_amount(self.amount)


@dataclasses.dataclass
class SparseGPTConfig(LayerSelection):
    """``prune/sparsegpt``: prune to ``amount`` (unstructured) or ``n``:``m`` with OBS weight updates.

    Give ``amount`` (default 0.5 when neither is set) or both ``n`` and ``m``, not both. ``block_size``
    columns are updated exactly, the rest lazily; ``damp`` is added to the Hessian's diagonal relative
    to its mean (raise it if the Hessian is reported singular).

    Example:
        >>> SparseGPTConfig(n=2, m=4, block_size=64)
    """

    amount: float | None = None
    n: int | None = None
    m: int | None = None
    block_size: int = 128
    damp: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.n is None) != (self.m is None):
            raise ConfigError(f"n={self.n}, m={self.m}: give both n and m for an N:M pattern, or neither")
        if self.n is not None:
            if self.amount is not None:
                raise ConfigError(
                    f"amount={self.amount} and n:m={self.n}:{self.m}: give amount (unstructured) "
                    "or n and m (semi-structured), not both"
                )
            check_n_m(self.n, self.m)
        else:
            check_amount(0.5 if self.amount is None else self.amount)
        check_range("block_size", self.block_size, 1)
        check_range("damp", self.damp, 0.0)

    @property
    def target_amount(self) -> float:
        """The sparsity aimed at: ``amount`` (0.5 when unset), or ``1 - n/m``."""
        if self.n is not None and self.m is not None:
            return 1.0 - self.n / self.m
        return 0.5 if self.amount is None else self.amount


def _wanda_layer(target: WeightTarget, stats: InputStats, amount: float) -> None:
    """Mask the ``amount`` share of lowest |W| * ||X|| in every output row of ``target``."""
    scores = wanda_scores(target, stats)
    rows, cols = scores.shape
    count = int(round(amount * cols))
    keep = torch.ones(rows, cols, dtype=torch.bool, device=scores.device)
    if count:
        lowest = torch.sort(scores, dim=1, stable=True).indices[:, :count]
        keep.scatter_(1, lowest, False)
    target.set_keep(keep)


def wanda_prune_(model: nn.Module, config: WandaConfig, loader: Iterable | None) -> dict[str, Any]:
    """The algorithm of ``prune/wanda``: mask ``model`` IN PLACE, return the summary."""
    method = "prune/wanda"
    layers, skipped = select_n_m(model, config, None, method=method)
    batches = calibration_batches(loader, config.calib_batches, method=method)

    def prune(name: str, target: WeightTarget, stats: InputStats) -> dict[str, Any]:
        _wanda_layer(target, stats, config.amount)
        return {}

    done, more, path = prune_layerwise(model, layers, batches, prune=prune, calibration=config.calibration)
    skipped.update(more)
    pruned = {name: layers[name] for name in layers if name in done}
    return sparsity_summary(
        model, pruned, skipped, method="wanda", amount=config.amount, calib_batches=len(batches), **path
    )


def sparsegpt_prune_(model: nn.Module, config: SparseGPTConfig, loader: Iterable | None) -> dict[str, Any]:
    """The algorithm of ``prune/sparsegpt``: prune and update ``model`` IN PLACE, return the summary."""
    method = "prune/sparsegpt"
    layers, skipped = select_n_m(model, config, config.m, method=method)
    batches = calibration_batches(loader, config.calib_batches, method=method)
    amount = None if config.n is not None else config.target_amount

    def prune(name: str, target: WeightTarget, stats: InputStats) -> dict[str, Any]:
        result = sparsegpt_prune(
            target.matrix(), stats.hessian, amount=amount, n=config.n, m=config.m,
            block_size=config.block_size, damp=config.damp, keep=target.keep(),
        )  # fmt: skip
        target.set_matrix(result.weight)
        target.set_keep(result.keep)
        return {"error": result.error}

    done, more, path = prune_layerwise(
        model, layers, batches, prune=prune, gram=True, calibration=config.calibration
    )
    skipped.update(more)
    pruned = {name: layers[name] for name in layers if name in done}
    pattern = f"{config.n}:{config.m}" if config.n is not None else "unstructured"
    return sparsity_summary(
        model, pruned, skipped, method="sparsegpt", pattern=pattern, amount=config.target_amount,
        calib_batches=len(batches), errors={name: done[name]["error"] for name in pruned}, **path,
    )  # fmt: skip


@register_method("prune", "wanda", config=WandaConfig)
def wanda(model: nn.Module, config: WandaConfig, data: MethodData) -> Result:
    """Wanda one-shot pruning: |W| x input norm, per output row, layer by layer on calibration data."""
    summary = wanda_prune_(model, config, data.calibration)
    return Result(model=model, summary=write_sparse(model, summary, data.out_dir, save=config.save_sparse))


@register_method("prune", "sparsegpt", config=SparseGPTConfig)
def sparsegpt(model: nn.Module, config: SparseGPTConfig, data: MethodData) -> Result:
    """SparseGPT one-shot pruning with OBS weight updates (unstructured or N:M), layer by layer."""
    summary = sparsegpt_prune_(model, config, data.calibration)
    return Result(model=model, summary=write_sparse(model, summary, data.out_dir, save=config.save_sparse))


def _selection(
    calib_batches: int, include: list[str] | None, exclude: Any, calibration: str
) -> dict[str, Any]:
    return {
        "calib_batches": calib_batches,
        "include": include,
        "exclude": list(exclude),
        "calibration": calibration,
    }


def prune_wanda_(
    model: nn.Module,
    loader: Iterable | None,
    *,
    amount: float = WandaConfig.amount,
    calib_batches: int = LayerSelection.calib_batches,
    include: list[str] | None = None,
    exclude: list[str] | tuple[str, ...] = (),
    calibration: str = LayerSelection.calibration,
    config: WandaConfig | None = None,
) -> dict[str, Any]:
    """Prune ``model`` IN PLACE with Wanda (``prune/wanda``) on ``loader``'s batches; return the summary.

    Example:
        >>> prune_wanda_(model, loader, amount=0.6, calib_batches=4)["global_sparsity"]
        0.6
    """
    if config is None:
        fields = {"amount": amount, **_selection(calib_batches, include, exclude, calibration)}
        config = WandaConfig.from_dict(fields, where="prune_wanda_")
    return apply(model, config, MethodData(calib_loader=loader)).summary


def prune_sparsegpt_(
    model: nn.Module,
    loader: Iterable | None,
    *,
    amount: float | None = SparseGPTConfig.amount,
    n: int | None = SparseGPTConfig.n,
    m: int | None = SparseGPTConfig.m,
    block_size: int = SparseGPTConfig.block_size,
    damp: float = SparseGPTConfig.damp,
    calib_batches: int = LayerSelection.calib_batches,
    include: list[str] | None = None,
    exclude: list[str] | tuple[str, ...] = (),
    calibration: str = LayerSelection.calibration,
    config: SparseGPTConfig | None = None,
) -> dict[str, Any]:
    """Prune ``model`` IN PLACE with SparseGPT (``prune/sparsegpt``) on ``loader``'s batches.

    ``amount`` (unstructured; 0.5 when neither is given) or ``n`` and ``m`` (e.g. 2:4). Returns the
    summary, with ``errors``: each layer's relative output error on the calibration data.

    Example:
        >>> s = prune_sparsegpt_(model, loader, n=2, m=4, exclude=["classifier"])
        >>> max(s["errors"].values()) < 0.5
    """
    if config is None:
        fields = {
            "amount": amount, "n": n, "m": m, "block_size": block_size, "damp": damp,
            **_selection(calib_batches, include, exclude, calibration),
        }  # fmt: skip
        config = SparseGPTConfig.from_dict(fields, where="prune_sparsegpt_")
    return apply(model, config, MethodData(calib_loader=loader)).summary
