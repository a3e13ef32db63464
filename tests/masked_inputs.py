"""The reference a channel-pruned model is compared with: the original whose Linears, convolutions and transposed
convolutions ignore their removed input features / channels."""

from __future__ import annotations

import copy

import torch
from torch import nn


def masked_inputs(model: nn.Module, keep: dict) -> nn.Module:
    """A copy of ``model`` whose Linear / Conv / ConvTranspose layers zero the inputs not in ``keep[name]["in"]``
    (a pre-hook: Linear features on the last dim, convolution channels on dim 1)."""
    ref = copy.deepcopy(model)
    for name, module in ref.named_modules():
        kept = keep.get(name, {}).get("in")
        if kept is None or not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        width = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        mask = torch.zeros(width)
        mask[kept] = 1

        def hook(mod: nn.Module, args: tuple, mask: torch.Tensor = mask) -> tuple:
            shape = [1] * args[0].dim()
            shape[-1 if isinstance(mod, nn.Linear) else 1] = -1
            return (args[0] * mask.view(shape), *args[1:])

        module.register_forward_pre_hook(hook)
    return ref
