"""The model a channel-pruned model must equal: the original whose layers ignore their removed input channels.

Channel pruning is exact when the smaller model computes what the original computes with the removed input
features / channels of every consumer set to zero. ``masked_reference`` builds that original (a copy; the
argument is untouched), so a pruning result can be checked on the user's own inputs.

Example:
    >>> plan = plan_channel_pruning(model, x, ratio=0.3)
    >>> small = apply_channel_plan(model, plan, x)
    >>> torch.testing.assert_close(small(x), masked_reference(model, plan.keep_indices())(x))
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["masked_reference"]


def masked_reference(model: nn.Module, keep: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """A copy of ``model`` whose Linear / Conv / ConvTranspose layers zero the inputs not in ``keep[name]["in"]``.

    ``keep`` is ``ChannelPlan.keep_indices()``'s form: per layer name, ``{"in": [kept input indices] | None, ...}``
    (``None``: every input kept). Linear features are masked on the last dimension, convolution channels on dim 1,
    by a forward pre-hook on the copy.
    """
    ref = copy.deepcopy(model)
    for name, module in ref.named_modules():
        kept = keep.get(name, {}).get("in")
        if kept is None or not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        width = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        mask = torch.zeros(width)
        mask[list(kept)] = 1

        def hook(mod: nn.Module, args: tuple, mask: torch.Tensor = mask) -> tuple:
            shape = [1] * args[0].dim()
            shape[-1 if isinstance(mod, nn.Linear) else 1] = -1
            return (args[0] * mask.to(args[0].dtype).view(shape), *args[1:])

        module.register_forward_pre_hook(hook)
    return ref
