"""The model a pruned model must equal: the original with what pruning removes masked, for every plan type.

:func:`masked_reference` (``nc.pruning.masked_reference(model, plan)``) returns a copy (the argument is untouched)
and dispatches on the plan:

- a channel plan (``ChannelPlan``) or its ``keep_indices()`` mapping: the original whose Linear / Conv layers zero
  their removed input features / channels (:func:`channel_masked_reference`);
- a ``TransformerPlan`` (heads, FFN neurons, hidden width): removed heads' output columns and neurons' down columns
  zero, removed stream channels zero where written, norms over the kept channels
  (``transformer_verify.masked_reference``; blocks found on ``model``, or pass ``blocks`` / ``stream``);
- head-dim pruning's ``kept`` mapping (per attention module, kept query/key and value indices per head): the
  removed q/k/v rows zero (``transformer_head_dim.masked_reference``).

Example:
    >>> plan = plan_channel_pruning(model, x, ratio=0.3)
    >>> small = apply_channel_plan(model, plan, x)
    >>> torch.testing.assert_close(small(x), masked_reference(model, plan)(x))
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError

__all__ = ["channel_masked_reference", "masked_reference"]


def masked_reference(
    model: nn.Module, plan: Any, *, blocks: Any = None, stream: Any = None, example_inputs: Any = None
) -> nn.Module:
    """A copy of ``model`` with what ``plan`` removes masked (see the module docstring for the plan types).

    ``blocks`` / ``stream`` (transformer plans): the units and stream layers the plan was made for (default: found
    on ``model``; with ``example_inputs``, layers whose output no module reads are told from stream writers, as
    ``prune_transformer`` does)."""
    from netcompress.pruning.transformer_surgery import TransformerPlan

    if isinstance(plan, TransformerPlan):
        from netcompress.pruning.transformer_blocks import find_blocks
        from netcompress.pruning.transformer_stream import find_outputs_only, stream_layers
        from netcompress.pruning.transformer_verify import masked_reference as transformer_reference

        if blocks is None:
            blocks = find_blocks(model)
            if example_inputs is not None and plan.hidden is not None:
                blocks.outputs_only = find_outputs_only(copy.deepcopy(model).eval(), example_inputs)
        if stream is None and plan.hidden is not None:
            stream = stream_layers(model, blocks)
        return transformer_reference(model, blocks, plan, stream)
    if hasattr(plan, "keep_indices"):
        return channel_masked_reference(model, plan.keep_indices())
    if isinstance(plan, Mapping) and plan and all(_is_head_dim_entry(v) for v in plan.values()):
        from netcompress.pruning.transformer_head_dim import masked_reference as head_dim_reference

        return head_dim_reference(copy.deepcopy(model), dict(plan))
    if isinstance(plan, Mapping) and all(isinstance(v, Mapping) for v in plan.values()):
        return channel_masked_reference(model, plan)
    raise ConfigError(
        f"masked_reference: a plan of type {type(plan).__name__} is none of the pruning plans (ChannelPlan or its "
        "keep_indices(), TransformerPlan, head-dim pruning's kept mapping)"
    )


def _is_head_dim_entry(value: Any) -> bool:
    """``(kept q/k indices per head, kept v indices per head)``."""
    return (
        isinstance(value, (tuple, list)) and len(value) == 2
        and all(isinstance(side, (tuple, list)) and all(isinstance(h, (tuple, list)) for h in side) for side in value)
    )  # fmt: skip


def channel_masked_reference(model: nn.Module, keep: Mapping[str, Mapping[str, Any]]) -> nn.Module:
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
