"""Slicing helpers of the transformer pruner: modules by qualified name, head rows, and a slicer that keeps tied
weights tied (used by :mod:`transformer_surgery` and :mod:`transformer_stream`)."""

from __future__ import annotations

import torch
from torch import nn

from netcompress.pruning.transformer_blocks import in_out, is_conv1d


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(get_module(model, parent), leaf, new)


def head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    """The channel indices of ``heads`` in a projection of ``head_dim``-wide heads laid out head after head."""
    return torch.tensor([h * head_dim + i for h in heads for i in range(head_dim)], dtype=torch.long)


class _Slicer:
    """Slices parameters, once per parameter object, so tied weights stay tied."""

    def __init__(self) -> None:
        # id -> (old, new): holding the old parameter keeps its id from being reused by a new object
        self.done: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}

    def __call__(self, module: nn.Module, attr: str, index: dict[int, torch.Tensor]) -> None:
        param = getattr(module, attr, None)
        if param is None:
            return
        if id(param) in self.done:
            setattr(module, attr, self.done[id(param)][1])
            return
        value = param.detach()
        for dim, idx in index.items():
            value = value.index_select(dim, idx.to(value.device))
        new = nn.Parameter(value.clone(), requires_grad=param.requires_grad)
        self.done[id(param)] = (param, new)
        setattr(module, attr, new)


def slice_dense(
    layer: nn.Module, slicer: _Slicer, *, out: torch.Tensor | None = None, inp: torch.Tensor | None = None
) -> None:
    """Keep output features ``out`` and input features ``inp`` of a Linear or transformers Conv1D."""
    conv1d = is_conv1d(layer)
    index = {}
    if out is not None:
        index[1 if conv1d else 0] = out
    if inp is not None:
        index[0 if conv1d else 1] = inp
    slicer(layer, "weight", index)
    if out is not None and getattr(layer, "bias", None) is not None:
        slicer(layer, "bias", {0: out})
    n_in, n_out = in_out(layer)
    if conv1d:
        layer.nf, layer.nx = n_out, n_in
    else:
        layer.in_features, layer.out_features = n_in, n_out
