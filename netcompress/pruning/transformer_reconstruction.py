"""Least-squares refit of a pruned transformer's output projections (``prune/transformer`` ``reconstruct``).

After heads and FFN neurons are removed, each block's output projection (attention ``out_proj`` / ``o``,
FFN ``down``) sees fewer input features. :func:`reconstruct_outputs_` refits those layers, in the order
they run, so each reproduces the unpruned model's output on calibration batches (a ridge regression of the
layer's inputs *in the pruned model*, already refitted upstream, against the same layer's outputs in the
original: :func:`netcompress.pruning.reconstruction.reconstruct_weights_` restricted to these layers).
The idea of Kwon et al. 2022 ("A fast post-training pruning framework for transformers") and of ThiNet.

Measured on the ViT of ``benchmarks/vit_pruning.py`` (8x8 patches, 2x fewer MACs, 3 heads of 4 and 32 of
192 FFN neurons kept per block; held-out validation split): 35.8 % -> 40.7 % right after pruning (unpruned
46.5 %); after the same 3-epoch fine-tune +0.1 to +0.6 points (benchmarks/RESULTS.md, issue 15 session 8).

``nn.MultiheadAttention`` runs its output projection inside a fused function (no module call to observe),
so both models are observed through copies whose ``nn.MultiheadAttention`` blocks are
:class:`~netcompress.pruning.transformer_mha.PrunedMultiheadAttention` keeping every head (same outputs);
the refitted weights are copied back into the pruned model, whose module types stay as they were.

Example:
    >>> small, summary = transformer_prune(model, x, TransformerPruneConfig(heads=0.5, ffn=0.5, reconstruct=True), loader=dl)
    >>> summary["reconstruction"]["layers"][0]  # {'name': ..., 'error_before': 0.68, 'error_after': 0.33}
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.pruning.reconstruction import reconstruct_weights_
from netcompress.pruning.transformer_blocks import Blocks, is_conv1d
from netcompress.pruning.transformer_mha import PrunedMultiheadAttention
from netcompress.pruning.transformer_surgery import TransformerPlan, get_module, set_module


def reference_copy(model: nn.Module, blocks: Blocks) -> nn.Module:
    """A copy of ``model`` computing the same outputs, every ``"mha"`` block as a module-calling attention."""
    reference = copy.deepcopy(model)
    for unit in blocks.attention:
        module = get_module(reference, unit.name)
        if unit.layout == "mha" and isinstance(module, nn.MultiheadAttention):
            keep = list(range(module.num_heads))
            set_module(reference, unit.name, PrunedMultiheadAttention.from_attention(module, keep_heads=keep))
    return reference


def output_layers(blocks: Blocks, plan: TransformerPlan) -> list[str]:
    """Names of the output projections of blocks that lost heads, neurons or stream channels."""
    names = []
    for u in blocks.attention:
        kept = plan.heads.get(u.name)
        if kept is not None and (len(kept) < u.num_heads or plan.hidden is not None):
            names.append(f"{u.name}.out_proj" if u.layout == "mha" else u.o)
    for u in blocks.ffn:
        kept = plan.neurons.get(u.name)
        if kept is not None and (len(kept) < u.width or plan.hidden is not None):
            names.append(u.down)
    return names


def reconstruct_outputs_(
    original: nn.Module,
    small: nn.Module,
    blocks: Blocks,
    plan: TransformerPlan,
    loader: Any,
    *,
    batches: int,
    ridge: float = 1e-3,
) -> dict[str, Any]:
    """Refit ``small``'s pruned output projections in place (see the module docstring); return the report.

    The report is :func:`reconstruct_weights_`'s: per layer the relative output error before and after.
    """
    if loader is None:
        raise ConfigError("prune/transformer reconstruct=True needs calibration batches (a loader)")
    names = output_layers(blocks, plan)
    for name in names:
        if is_conv1d(get_module(small, name)):
            raise ConfigError(
                f"prune/transformer reconstruct=True: {name!r} is a transformers Conv1D, which is not refitted"
            )
    kept = {name: {"out": plan.hidden} for name in names}  # None: every output channel kept
    # refit on an observable copy (an nn.MultiheadAttention left whole, or an nn.TransformerEncoderLayer on its
    # fused path, calls no Linear module), then copy the refitted weights into ``small`` (same names)
    work = reference_copy(small, blocks)
    report = reconstruct_weights_(
        work, reference_copy(original, blocks), loader, kept_indices=kept, num_batches=batches,
        ridge=ridge, only=names,
    )  # fmt: skip
    with torch.no_grad():
        for name in names:
            source, target = get_module(work, name), get_module(small, name)
            target.weight.copy_(source.weight)
            if target.bias is not None:
                target.bias.copy_(source.bias)
    return report
