"""Torch-Pruning, the peer of ``benchmarks/vit_pruning.py`` on the ViT (moved out of it in session 12).

``prune_torch_pruning``: MetaPruner (group L2 magnitude) at the smallest ratio reaching ``--mac-reduction``;
with ``--tp-exact``, the width one ``round_to`` step wider and then FFN neurons removed through Torch-Pruning's
own dependency graph to land on the target.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
from torch import nn


def prune_torch_pruning(
    args: argparse.Namespace, model: nn.Module, x: torch.Tensor
) -> tuple[nn.Module, dict]:
    """Torch-Pruning's MetaPruner (group L2 magnitude) at the smallest ratio reaching ``--mac-reduction``.

    On ``nn.MultiheadAttention`` Torch-Pruning prunes the embedding width (with the residual stream:
    patch embedding, norms, every Linear reading it) and FFN neurons; ``round_to`` = heads keeps the
    attention width divisible by the head count. Raises ImportError without torch_pruning.
    """
    import torch_pruning as tp

    from netcompress.pruning.transformer_pruning import count_macs

    base = count_macs(model, x)
    heads = max(m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention))

    def pruned(ratio: float) -> nn.Module:
        small = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(
            small, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
            ignored_layers=[small.head], round_to=heads,
            unwrapped_parameters=[(small.cls_token, 2), (small.pos_embed, 2)],
        )  # fmt: skip
        pruner.step()
        return small

    def smallest(make: Any) -> tuple[float, nn.Module]:
        lo, hi = 0.0, 0.9
        best = make(hi)
        for _ in range(10):
            mid = (lo + hi) / 2
            small = make(mid)
            if base / count_macs(small, x) >= args.mac_reduction:
                hi, best = mid, small
            else:
                lo = mid
        return hi, best

    ratio, best = smallest(pruned)
    info = {"pruning_ratio": round(ratio, 4), "mac_reduction": base / count_macs(best, x)}
    if getattr(args, "tp_exact", False):
        best, info = _torch_pruning_exact(args, model, x, ratio, pruned, base)
    return best.eval(), info


def _torch_pruning_exact(
    args: argparse.Namespace, model: nn.Module, x: torch.Tensor, ratio: float, pruned: Any, base: int
) -> tuple[nn.Module, dict]:
    """Torch-Pruning at the MAC target, not one ``round_to`` step past it.

    The embedding width one step wider than ``ratio`` gives (MetaPruner, as above), then in every layer the
    same number of FFN neurons removed through Torch-Pruning's own dependency graph (``linear1`` output group,
    ``GroupMagnitudeImportance(p=2)``, one neuron at a time): the fewest reaching ``args.mac_reduction``.
    """
    import torch_pruning as tp

    from netcompress.pruning.transformer_pruning import count_macs

    dim = pruned(ratio).cls_token.shape[-1]
    wide_ratio = ratio
    while wide_ratio > 0:  # ratios map to widths in steps of round_to: step back to the next wider one
        wide_ratio = max(0.0, wide_ratio - 0.25 / model.cls_token.shape[-1])
        if pruned(wide_ratio).cls_token.shape[-1] > dim:
            break
    wide = pruned(wide_ratio)
    ffn = wide.encoder.layers[0].linear1.out_features

    def with_ffn(remove: int) -> nn.Module:
        small = copy.deepcopy(wide)
        graph = tp.DependencyGraph().build_dependency(
            small, example_inputs=x, unwrapped_parameters=[(small.cls_token, 2), (small.pos_embed, 2)]
        )
        importance = tp.importance.GroupMagnitudeImportance(p=2)
        for layer in small.encoder.layers:
            full = graph.get_pruning_group(layer.linear1, tp.prune_linear_out_channels, idxs=list(range(ffn)))
            scores = importance(full)
            drop = scores.argsort()[:remove].tolist()
            graph.get_pruning_group(layer.linear1, tp.prune_linear_out_channels, idxs=drop).prune()
        return small

    lo, hi = 0, ffn - 1
    while lo < hi:  # the fewest neurons per layer reaching the target
        mid = (lo + hi) // 2
        if base / count_macs(with_ffn(mid), x) >= args.mac_reduction:
            hi = mid
        else:
            lo = mid + 1
    best = with_ffn(lo)
    info = {
        "pruning_ratio": round(wide_ratio, 4), "width": best.cls_token.shape[-1],
        "ffn_after": ffn - lo, "mac_reduction": base / count_macs(best, x),
    }  # fmt: skip
    return best, info
