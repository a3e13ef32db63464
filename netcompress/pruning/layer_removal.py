"""Depth pruning for plain chains: remove a layer (with its norm and activation) whose output has its input's shape.

A VGG has no residual branches (:mod:`netcompress.pruning.branch_removal`), but a convolution that maps C
channels to C channels at the same resolution, followed by its BatchNorm and ReLU, can be taken out of its
``nn.Sequential`` whole: the next layer then reads the removed layer's input, which has the same shape. On the
narrow CIFAR VGG (``cifar_vgg(cfg="narrow")``) the three C->C convolutions hold 28.3 of 43.4 MMACs; removing
them lets a MAC target keep ~0.6 of every remaining width where width pruning alone keeps ~0.35. Measured
(``benchmarks/RESULTS.md``, issue 18 session 16, 5 fine-tune epochs, validation split): at 8x fewer MACs that trade
LOSES (66.9-69.5 % against 70.3-71.1 % for width alone; the 4-conv model reaches only 70.5 % even at full width),
while removing conv2 alone (32x32, 1.28x fewer MACs) costs nothing after the same fine-tune (74.7 % vs 74.3 %).

A layer is *removable* when:

- it is an ``nn.Conv1d/2d/3d`` or ``nn.Linear`` inside an ``nn.Sequential`` (a plain chain: what follows it
  reads only its output), called exactly once per forward;
- its input and output widths match (``in_channels == out_channels``), and the chain it heads - the layer,
  at most one norm right after it, at most one activation after that - gives an output of its input's shape
  on ``example_inputs`` (a strided or unpadded convolution is refused).

:func:`remove_layers` returns a copy in which every module of each chain is an ``nn.Identity`` (module
names stay, so later layers keep theirs): a real smaller model, equal to the original with those modules
replaced by identities. With a ``loader`` it also refits the first Conv/Linear layer after each removed chain
by least squares (:func:`netcompress.pruning.reconstruction.reconstruct_weights_`): its weights are chosen so
that, reading the removed chain's input, it reproduces its output in the original model on a few batches.

Example:
    >>> small, summary = remove_layers(model, x, ["features.3", "features.10"], loader=train_loader)
    >>> summary["removed"][0]["modules"]
    ['features.3', 'features.4', 'features.5']
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.pruning.graph import as_inputs, eval_mode
from netcompress.pruning.reconstruction import layer_call_order, reconstruct_weights_

__all__ = ["LayerChain", "find_chain", "remove_layers"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.ELU, nn.Tanh, nn.Sigmoid)


@dataclasses.dataclass(frozen=True)
class LayerChain:
    """A removable chain: the ``nn.Sequential`` holding it and its modules' qualified names (layer first)."""

    parent: str
    modules: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"parent": self.parent, "modules": list(self.modules)}


def _widths(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels, layer.out_channels


def _calls(model: nn.Module, names: Sequence[str], example_inputs: Any) -> dict[str, list[tuple[Any, Any]]]:
    """``name -> [(input, output), ...]`` of every call of those modules when ``model`` runs on the example."""
    seen: dict[str, list[tuple[Any, Any]]] = {name: [] for name in names}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, args, out, name=name: seen[name].append((args[0] if args else None, out))
        )
        for name in names
    ]
    try:
        with eval_mode(model), torch.no_grad():
            model(*as_inputs(example_inputs))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def find_chain(model: nn.Module, name: str, example_inputs: Any) -> LayerChain:
    """The removable chain headed by layer ``name``; an UnsupportedModelError says why it is not removable."""
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise ConfigError(f"remove_layers: the model has no module named {name!r}")
    layer = modules[name]
    if not isinstance(layer, _LAYERS):
        raise UnsupportedModelError(
            f"{name!r} is a {type(layer).__name__}: only Conv1d/2d/3d and Linear layers are removable"
        )
    width_in, width_out = _widths(layer)
    if width_in != width_out:
        raise UnsupportedModelError(
            f"{name!r} maps {width_in} to {width_out} channels: only a layer whose input and output widths "
            f"match can be replaced by an identity"
        )
    parent_name, _, child = name.rpartition(".")
    parent = modules[parent_name]
    if not isinstance(parent, nn.Sequential):
        raise UnsupportedModelError(
            f"{name!r} is not in a plain chain: its parent {parent_name or 'the model'!r} is a "
            f"{type(parent).__name__}, not an nn.Sequential (what reads its output is not known)"
        )
    keys = list(parent._modules)
    chain, position = [name], keys.index(child) + 1
    for kinds in (_NORMS, _ACTIVATIONS):
        if position < len(keys) and isinstance(parent._modules[keys[position]], kinds):
            chain.append(f"{parent_name}.{keys[position]}" if parent_name else keys[position])
            position += 1
    calls = _calls(model, [name, chain[-1]], example_inputs)
    if len(calls[name]) != 1 or len(calls[chain[-1]]) != 1:
        raise UnsupportedModelError(
            f"{name!r} is called {len(calls[name])} times per forward: only a layer called exactly once is removable"
        )
    (x, _), (_, y) = calls[name][0], calls[chain[-1]][0]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape:
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (x, y)]
        raise UnsupportedModelError(
            f"{name!r}: its chain ({', '.join(chain)}) turns shape {shapes[0]} into {shapes[1]}: only a chain "
            f"whose output has its input's shape can be replaced by an identity"
        )
    return LayerChain(parent=parent_name, modules=tuple(chain))


def remove_layers(
    model: nn.Module,
    example_inputs: Any,
    names: Sequence[str],
    *,
    loader: Any = None,
    num_batches: int = 10,
    ridge: float = 1e-3,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` without the chains headed by the layers ``names`` (each module an ``nn.Identity``).

    ``loader`` (batches of ``inputs`` or ``(inputs, targets)``): refit the first Conv/Linear layer after each
    removed chain (one that is not removed itself) on ``num_batches`` batches so it reproduces its output in
    ``model`` from the removed chain's input (ridge regression; ``ridge`` is relative to the mean diagonal of the
    inputs' Gram matrix). Returns ``(smaller copy, summary)``: the removed chains and, under ``refit`` (None
    without a loader), the refit layers with their relative output errors before / after."""
    if isinstance(names, str) or not names:
        raise ConfigError("remove_layers: names must be a non-empty list of layer names")
    if len(set(names)) != len(names):
        raise ConfigError(f"remove_layers: a layer is named twice in {list(names)}")
    chains = [find_chain(model, name, example_inputs) for name in names]
    removed = {m for chain in chains for m in chain.modules}
    small = copy.deepcopy(model)
    for chain in chains:
        parent = small.get_submodule(chain.parent)
        for module in chain.modules:
            setattr(parent, module.rpartition(".")[2], nn.Identity())
    refit = None
    if loader is not None:
        with eval_mode(model):
            order = layer_call_order(model, example_inputs)
        targets = []
        for chain in chains:
            after = [n for n in order[order.index(chain.modules[0]) + 1 :] if n not in removed]
            if after and after[0] not in targets:
                targets.append(after[0])
        refit = reconstruct_weights_(
            small, model, loader, kept_indices={}, num_batches=num_batches, ridge=ridge, only=targets
        )
    summary = {"removed": [chain.to_dict() for chain in chains], "refit": refit}
    return small, summary
