"""Physical removal of channels: slicing weights, biases and BatchNorm statistics of each layer.

Given, per layer, the input/output channel indices to keep (from
:meth:`ChannelGraph.keep_indices`), each layer kind has a shrink function in :data:`SHRINKERS`
that replaces its parameters and buffers with sliced copies and updates its size attributes.
Everything here edits the model it is given (the trailing ``_`` says so); callers deep-copy first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.core.registry import Registry
from netcompress.pruning.graph import ChannelGraph
from netcompress.pruning.masks import MASK_SUFFIX

Shrinker = Callable[[nn.Module, list[int] | None, list[int] | None], None]
SHRINKERS: Registry[Shrinker] = Registry("layer shrinker")


def _index(t: torch.Tensor, keep: list[int], dim: int = 0) -> torch.Tensor:
    return t.detach().index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=t.device)).clone()


def _set_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


def _slice_param(module: nn.Module, name: str, keep: list[int], dim: int = 0) -> None:
    """Slice parameter ``name`` and its pruning mask ``<name>_mask`` (if any) alike along ``dim``."""
    _set_param(module, name, _index(getattr(module, name), keep, dim))
    mask = module._buffers.get(name + MASK_SUFFIX)
    if mask is not None:
        module._buffers[name + MASK_SUFFIX] = _index(mask, keep, dim)


@SHRINKERS.register("conv")
def shrink_conv_(module: nn.Module, in_keep: list[int] | None, out_keep: list[int] | None) -> None:
    """Slice a Conv1d/2d/3d; dense, depthwise (groups follow the kept inputs) and grouped convs."""
    groups, c_in, c_out = module.groups, module.in_channels, module.out_channels
    per_in, per_out = c_in // groups, c_out // groups
    _slice_param(module, "weight", out_keep)
    if groups == 1:
        _slice_param(module, "weight", in_keep, 1)
        new_groups = 1
    elif per_in == 1:
        new_groups = len(in_keep)
        if len(out_keep) != new_groups * per_out:
            raise UnsupportedModelError(f"depthwise conv: {len(out_keep)} outputs for {new_groups} groups")
    else:
        positions = [i for i in in_keep if i < per_in]
        if len(in_keep) != groups * len(positions) or len(out_keep) % groups:
            raise UnsupportedModelError(f"grouped conv ({groups} groups): uneven channels kept per group")
        _slice_param(module, "weight", positions, 1)
        new_groups = groups
    if module.bias is not None:
        _slice_param(module, "bias", out_keep)
    module.in_channels, module.out_channels, module.groups = len(in_keep), len(out_keep), new_groups


@SHRINKERS.register("conv_transpose")
def shrink_conv_transpose_(module: nn.Module, in_keep: list[int] | None, out_keep: list[int] | None) -> None:
    """Slice a ConvTranspose1d/2d/3d, whose weight is ``(in, out / groups, *kernel)``: inputs along dim 0,
    each group's output positions along dim 1 (a depthwise one keeps whole groups: one per kept input)."""
    groups, c_in, c_out = module.groups, module.in_channels, module.out_channels
    per_in, per_out = c_in // groups, c_out // groups
    _slice_param(module, "weight", in_keep)
    if groups == 1:
        _slice_param(module, "weight", out_keep, 1)
        new_groups = 1
    elif per_in == 1:
        new_groups = len(in_keep)
        if out_keep != [i * per_out + j for i in in_keep for j in range(per_out)]:
            raise UnsupportedModelError(f"depthwise transposed conv: outputs {out_keep} are not whole groups")
    else:
        positions = [o for o in out_keep if o < per_out]
        if len(out_keep) != groups * len(positions) or len(in_keep) % groups:
            raise UnsupportedModelError(f"grouped transposed conv ({groups} groups): uneven channels kept per group")
        _slice_param(module, "weight", positions, 1)
        new_groups = groups
    if module.bias is not None:
        _slice_param(module, "bias", out_keep)
    module.in_channels, module.out_channels, module.groups = len(in_keep), len(out_keep), new_groups


@SHRINKERS.register("linear")
def shrink_linear_(module: nn.Module, in_keep: list[int] | None, out_keep: list[int] | None) -> None:
    _slice_param(module, "weight", out_keep)
    _slice_param(module, "weight", in_keep, 1)
    if module.bias is not None:
        _slice_param(module, "bias", out_keep)
    module.in_features, module.out_features = len(in_keep), len(out_keep)


@SHRINKERS.register("batchnorm")
def shrink_batchnorm_(module: nn.Module, in_keep: list[int] | None, out_keep: list[int] | None) -> None:
    """BatchNorm, and InstanceNorm (kind ``instancenorm``): the affine vectors and running statistics if any."""
    for name in ("weight", "bias"):
        if getattr(module, name, None) is not None:
            _slice_param(module, name, out_keep)
    for name in ("running_mean", "running_var"):
        if getattr(module, name, None) is not None:
            setattr(module, name, _index(getattr(module, name), out_keep))
    module.num_features = len(out_keep)


SHRINKERS.register("instancenorm", shrink_batchnorm_)


@SHRINKERS.register("groupnorm")
def shrink_groupnorm_(module: nn.Module, in_keep: list[int] | None, out_keep: list[int] | None) -> None:
    """Keep whole groups (the graph unites each group's channels): fewer groups, same group size."""
    per_group = module.num_channels // module.num_groups
    groups = sorted({c // per_group for c in out_keep})
    if out_keep != [g * per_group + j for g in groups for j in range(per_group)]:
        raise UnsupportedModelError(
            f"GroupNorm: kept channels {out_keep} are not whole groups of {per_group}"
        )
    for name in ("weight", "bias"):
        if getattr(module, name, None) is not None:
            _slice_param(module, name, out_keep)
    module.num_groups, module.num_channels = len(groups), len(out_keep)


@SHRINKERS.register("prelu")
def shrink_prelu_(module: nn.Module, in_keep: list[int] | None, out_keep: list[int] | None) -> None:
    _slice_param(module, "weight", out_keep)
    module.num_parameters = len(out_keep)


@SHRINKERS.register("custom")
def shrink_custom_(module: nn.Module, in_keep: list[int] | None, out_keep: list[int] | None) -> None:
    """Protocol modules shrink themselves: ``prune_out_channels`` / ``prune_in_channels``."""
    if out_keep is not None and len(out_keep) != module.out_channels:
        module.prune_out_channels(torch.as_tensor(out_keep, dtype=torch.long))
        if module.out_channels != len(out_keep):
            raise UnsupportedModelError(
                f"{type(module).__name__}.prune_out_channels kept {module.out_channels} channels, expected {len(out_keep)}"
            )
    if in_keep is not None and hasattr(module, "prune_in_channels"):
        module.prune_in_channels(torch.as_tensor(in_keep, dtype=torch.long))


def shrink_model_(
    model: nn.Module, graph: ChannelGraph, keep: dict[str, dict[str, list[int] | None]]
) -> nn.Module:
    """Shrink every layer of ``model`` (in place) to the kept indices; returns ``model``.

    Layers whose channels all survive are left untouched.

    Example:
        >>> shrink_model_(model_copy, graph, graph.keep_indices(pruned_units))
    """
    for name, layer in graph.layers.items():
        in_keep, out_keep = keep[name]["in"], keep[name]["out"]
        changed = any(
            k is not None and len(k) != len(labels or ())
            for k, labels in ((in_keep, layer.in_labels), (out_keep, layer.out_labels))
        )
        if not changed:
            continue
        module = model.get_submodule(name)
        if in_keep is None and layer.in_labels is not None:
            in_keep = list(range(len(layer.in_labels)))
        if out_keep is None and layer.out_labels is not None:
            out_keep = list(range(len(layer.out_labels)))
        SHRINKERS.get(layer.kind)(module, in_keep, out_keep)
    return model
