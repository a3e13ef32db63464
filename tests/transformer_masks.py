"""The reference a head / FFN-pruned transformer is compared with, built from the pruning summary alone: the
original with the removed heads' output-projection columns and the removed neurons' down-projection columns zeroed."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from netcompress.pruning.transformer_blocks import find_blocks


def masked_heads_and_neurons(model: nn.Module, summary: dict) -> nn.Module:
    """A copy of ``model`` in eval mode without the heads and FFN neurons ``summary`` (``prune_transformer``'s) removed."""
    ref, blocks = copy.deepcopy(model), find_blocks(model)
    outs = {u.name: (u.o, u.head_dim) for u in blocks.attention}
    downs = {u.name: u.down for u in blocks.ffn}
    with torch.no_grad():
        for entry in summary["heads"]:
            o, d = outs[entry["name"]]
            for h in set(range(entry["before"])) - set(entry["kept"]):
                ref.get_submodule(o).weight[:, h * d : (h + 1) * d] = 0
        for entry in summary["ffn"]:
            gone = sorted(set(range(entry["before"])) - set(entry["kept"]))
            ref.get_submodule(downs[entry["name"]]).weight[:, gone] = 0
    return ref.eval()


def plan_equals_masked(model: nn.Module, plan: Any, run: Callable[[nn.Module], torch.Tensor]) -> nn.Module:
    """Apply the TransformerPlan ``plan`` to a copy of ``model``; assert its output (``run(m)`` of a model) equals the
    masked original's (``transformer_verify.masked_reference``) and differs from the unmasked original's, so the
    masking is seen. Returns the pruned copy."""
    from netcompress.pruning.transformer_surgery import apply_transformer_plan_
    from netcompress.pruning.transformer_verify import masked_reference

    ref = masked_reference(model, find_blocks(model), plan, None)
    small = copy.deepcopy(model)
    apply_transformer_plan_(small, find_blocks(small), plan)
    with torch.no_grad():
        want, got, full = (run(m) for m in (ref, small, model))
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (full - want).abs().max() > 1e-3  # the masking is seen
    return small
