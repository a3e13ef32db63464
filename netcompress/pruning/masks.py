"""Pruning masks that survive training, copying and saving.

A mask is a boolean buffer ``<param>_mask`` registered on the module that owns the parameter
(``weight`` -> ``weight_mask``), so it travels with ``state_dict``, ``copy.deepcopy`` and
``torch.save(model)``. Three small hook objects (module-level classes, so they pickle) zero the
pruned entries of the parameter in place:

- before every forward (so any training loop or optimiser, momentum and weight decay included,
  computes with the pruned weights),
- before ``state_dict()`` is taken (so saved weights hold the zeros),
- after ``load_state_dict()`` (so loaded weights are pruned at once).

Unlike ``torch.nn.utils.prune`` (which renames the parameter to ``weight_orig``) the parameter
keeps its name and stays a leaf, so optimisers built before pruning keep working; unlike
``torch.nn.utils.parametrize`` the model pickles.

Example:
    >>> layer = nn.Linear(4, 2)
    >>> apply_mask(layer, "weight", layer.weight.abs() > 0.1)
    >>> sparsity_report(layer)["global"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError

MASK_SUFFIX = "_mask"
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


RECURRENT_MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


def recurrent_weights(module: nn.Module) -> list[str]:
    """Names of the weight matrices of an LSTM/GRU/RNN layer (``weight_ih_l0``, ``weight_hh_l0_reverse``, ...),
    which no Conv/Linear-based pruning covers; empty for any other module.

    Example:
        >>> recurrent_weights(nn.GRU(4, 8))
        ['weight_ih_l0', 'weight_hh_l0']
    """
    if getattr(module, "mode", None) not in RECURRENT_MODES:
        return []
    return [n for n, p in module._parameters.items() if p is not None and n.startswith("weight_")]


def _mask_names(module: nn.Module) -> list[str]:
    """Names of the parameters of ``module`` (not its children) that carry a mask buffer."""
    return [
        name[: -len(MASK_SUFFIX)]
        for name in module._buffers
        if name.endswith(MASK_SUFFIX) and module._parameters.get(name[: -len(MASK_SUFFIX)]) is not None
    ]


@torch.no_grad()
def enforce_masks(module: nn.Module) -> None:
    """Zero the pruned entries of every masked parameter of ``module`` (in place, not recursive).

    ``.data`` is written so autograd's version counter is untouched: re-zeroing already-zero
    entries between two forwards must not invalidate a graph saved for backward.

    Example:
        >>> enforce_masks(layer)
    """
    for name in _mask_names(module):
        param = module._parameters[name]
        mask = module._buffers[name + MASK_SUFFIX]
        param.data.masked_fill_(~mask, 0)


class MaskForwardPreHook:
    """Forward pre-hook: re-applies the masks before each forward (stateless, picklable)."""

    def __call__(self, module: nn.Module, args: Any) -> None:
        enforce_masks(module)


class MaskStateDictPreHook:
    """``state_dict`` pre-hook: saved weights hold the zeros even right after an optimiser step."""

    def __call__(self, module: nn.Module, prefix: str, keep_vars: bool) -> None:
        enforce_masks(module)


class MaskLoadPostHook:
    """``load_state_dict`` post-hook: loaded weights are pruned before any forward."""

    def __call__(self, module: nn.Module, incompatible_keys: Any) -> None:
        enforce_masks(module)


_HOOK_TABLES = (
    ("_forward_pre_hooks", MaskForwardPreHook, "register_forward_pre_hook"),
    ("_state_dict_pre_hooks", MaskStateDictPreHook, "register_state_dict_pre_hook"),
    ("_load_state_dict_post_hooks", MaskLoadPostHook, "register_load_state_dict_post_hook"),
)


def _install_hooks(module: nn.Module) -> None:
    for table, cls, register in _HOOK_TABLES:
        if not any(isinstance(h, cls) for h in getattr(module, table).values()):
            getattr(module, register)(cls())


def _uninstall_hooks(module: nn.Module) -> None:
    for table, cls, _ in _HOOK_TABLES:
        hooks = getattr(module, table)
        for key in [k for k, h in hooks.items() if isinstance(h, cls)]:
            del hooks[key]


def apply_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Prune ``module.<name>`` IN PLACE where ``mask`` is False/0; combines with an existing mask.

    The mask is stored as the boolean buffer ``<name>_mask``; the pruned entries are zeroed at
    once and kept at zero by hooks (see the module docstring).

    Example:
        >>> apply_mask(model.fc, "weight", torch.rand_like(model.fc.weight) > 0.5)
    """
    param = module._parameters.get(name)
    if param is None:
        raise ConfigError(f"{type(module).__name__} has no parameter {name!r} to mask")
    if tuple(mask.shape) != tuple(param.shape):
        raise ConfigError(
            f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter has {tuple(param.shape)}"
        )
    keep = (mask != 0).to(device=param.device)
    old = module._buffers.get(name + MASK_SUFFIX)
    if old is not None:
        keep = keep & old
        module._buffers[name + MASK_SUFFIX] = keep
    else:
        module.register_buffer(name + MASK_SUFFIX, keep)
    _install_hooks(module)
    enforce_masks(module)


def masked_parameters(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(module_name, module, param_name)`` for every masked parameter in ``model``.

    Example:
        >>> [(n, p) for n, _, p in masked_parameters(model)]
        [('features.0', 'weight'), ('classifier', 'weight')]
    """
    return [(mod_name, module, p) for mod_name, module in model.named_modules() for p in _mask_names(module)]


def remove_masks(model: nn.Module) -> dict[str, Any]:
    """Make pruning permanent IN PLACE: zero the weights, drop mask buffers and hooks.

    Afterwards the model is a plain model whose ``state_dict`` has no ``*_mask`` keys.

    Example:
        >>> remove_masks(model)
        {'removed': 3, 'layers': ['0', '2', '4']}
    """
    removed: list[str] = []
    for mod_name, module, p_name in masked_parameters(model):
        enforce_masks(module)
        del module._buffers[p_name + MASK_SUFFIX]
        removed.append(mod_name if p_name == "weight" else f"{mod_name}.{p_name}")
    for module in model.modules():
        if not _mask_names(module):
            _uninstall_hooks(module)
    return {"removed": len(removed), "layers": removed}


def _report_key(mod_name: str, p_name: str) -> str:
    # per-layer keys are layer names for weights (what users select with include/exclude)
    return mod_name if p_name == "weight" else f"{mod_name}.{p_name}"


@torch.no_grad()
def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Share of zero entries per prunable weight and over all of them (masks counted as zeros).

    Covers the weights of Conv1d/Conv2d/Conv3d/Linear layers, the weight matrices of LSTM/GRU/RNN layers, plus
    any other masked parameter; layer keys are module names (``"features.0"``), or ``"module.param"`` for non-weight parameters.

    Example:
        >>> sparsity_report(model)
        {'global': 0.5, 'per_layer': {'0': 0.5, '2': 0.5}, 'zeros': 64, 'total': 128}
    """
    entries: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for mod_name, module in model.named_modules():
        names = set(_mask_names(module))
        if isinstance(module, PRUNABLE_TYPES) and module._parameters.get("weight") is not None:
            names.add("weight")
        names.update(
            recurrent_weights(module)
        )  # left dense by every pruner, counted so the share is the model's
        for p_name in sorted(names):
            mask = module._buffers.get(p_name + MASK_SUFFIX)
            entries[_report_key(mod_name, p_name)] = (module._parameters[p_name], mask)
    per_layer: dict[str, float] = {}
    zeros = total = 0
    for key, (param, mask) in entries.items():
        effective = param.detach() if mask is None else param.detach().masked_fill(~mask, 0)
        z = int(param.numel() - torch.count_nonzero(effective))
        per_layer[key] = z / max(1, param.numel())
        zeros += z
        total += param.numel()
    return {"global": zeros / max(1, total), "per_layer": per_layer, "zeros": zeros, "total": total}


def load_masked_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True
) -> Any:
    """``model.load_state_dict`` that first creates the masks named by ``*_mask`` keys.

    A state dict saved from a pruned model carries ``<layer>.weight_mask`` entries; a freshly
    built model has no such buffers, so plain ``load_state_dict`` would reject them.

    Example:
        >>> fresh = make_model(); load_masked_state_dict(fresh, torch.load("pruned_sd.pt"))
    """
    for key, value in state_dict.items():
        if not key.endswith(MASK_SUFFIX):
            continue
        mod_name, _, buf_name = key.rpartition(".")
        try:
            module = model.get_submodule(mod_name) if mod_name else model
        except AttributeError:
            continue  # left for load_state_dict to report as an unexpected key
        p_name = buf_name[: -len(MASK_SUFFIX)]
        if module._parameters.get(p_name) is not None and buf_name not in module._buffers:
            apply_mask(module, p_name, value.to(torch.bool))
    return model.load_state_dict(dict(state_dict), strict=strict)


class MaskKeeper:
    """Training hook: re-applies every mask right after each optimiser step.

    The forward pre-hook already guarantees pruned forwards; this keeps the stored weights at
    zero between steps too (e.g. for a profiler counting non-zero parameters mid-training), and
    reports the sparsity of each epoch.

    Example:
        >>> fit(model, train_loader, hooks=[MaskKeeper()])
    """

    def after_step(self, model: nn.Module) -> None:
        for module in model.modules():
            enforce_masks(module)

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {"sparsity": sparsity_report(model)["global"]}
