"""The reference a channel-pruned model is compared with: the original whose Linears ignore removed input features."""

from __future__ import annotations

import copy

import torch
from torch import nn


def masked_inputs(model: nn.Module, keep: dict) -> nn.Module:
    """A copy of ``model`` whose Linears zero the input features not in ``keep[name]["in"]`` (a pre-hook)."""
    ref = copy.deepcopy(model)
    for name, module in ref.named_modules():
        kept = keep.get(name, {}).get("in")
        if kept is not None and isinstance(module, nn.Linear):
            mask = torch.zeros(module.in_features)
            mask[kept] = 1
            module.register_forward_pre_hook(lambda m, a, mask=mask: (a[0] * mask, *a[1:]))
    return ref
