"""The pruning benchmark's unstructured rows and the finishers that turn each row's result into its file.

- ``torch_unstructured``: ``torch.nn.utils.prune.global_unstructured`` (L1) at ``--unstructured-amount``;
- ``nc_unstructured``: ``netcompress.prune_unstructured`` (global L1), masks kept through fine-tuning;
- finishers: structured rows need nothing; mask rows are written as sparse ``.ncz`` files (bytes recorded).

Registered into :data:`pruning_methods.METHODS` / ``FINISHERS`` when :mod:`pruning_methods` is imported.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pruning_methods import FINISHERS, METHODS, Context, Pruned
from torch import nn
from torch.nn.utils import prune as torch_prune

from netcompress.pruning import MaskKeeper, prune_unstructured, remove_masks, save_sparse


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@METHODS.register("torch_unstructured")
def _torch_unstructured(base: nn.Module, ctx: Context) -> Pruned:
    model = copy.deepcopy(base)
    amount = ctx.config.unstructured_amount
    torch_prune.global_unstructured(
        _prunable(model), pruning_method=torch_prune.L1Unstructured, amount=amount
    )
    return Pruned(model, kind="torch_masks", info={"label": f"torch.nn.utils.prune global L1 {amount:.0%}"})


@METHODS.register("nc_unstructured")
def _nc_unstructured(base: nn.Module, ctx: Context) -> Pruned:
    model = copy.deepcopy(base)
    amount = ctx.config.unstructured_amount
    prune_unstructured(model, amount=amount, method="l1", scope="global")
    label = f"netcompress unstructured global L1 {amount:.0%}"
    return Pruned(model, kind="nc_masks", hooks=(MaskKeeper(),), info={"label": label})


@FINISHERS.register("structured")
def _finish_structured(model: nn.Module, ctx: Context, name: str) -> dict[str, Any]:
    return {}


@FINISHERS.register("torch_masks")
def _finish_torch_masks(model: nn.Module, ctx: Context, name: str) -> dict[str, Any]:
    with torch.no_grad():
        for module, param in _prunable(model):
            torch_prune.remove(module, param)  # weight = weight_orig * mask, as a plain parameter
            # orig * mask leaves -0.0 where orig < 0; .ncz keeps -0.0 bit-exactly as a non-zero value,
            # so canonicalise (-0.0 + 0.0 == +0.0) for the file to see the zeros
            getattr(module, param).add_(0.0)
    return {"sparse_size_bytes": save_sparse(model, ctx.work_dir / f"{name}.ncz")["size_bytes"]}


@FINISHERS.register("nc_masks")
def _finish_nc_masks(model: nn.Module, ctx: Context, name: str) -> dict[str, Any]:
    sparse = save_sparse(model, ctx.work_dir / f"{name}.ncz")
    remove_masks(model)
    return {"sparse_size_bytes": sparse["size_bytes"]}
