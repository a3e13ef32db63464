"""Truncated-SVD factorisations of single layers, each a registered :class:`Factorization`.

- ``linear``: ``W (out, in) = U S V^T`` -> ``Linear(in, r, bias=False)`` then ``Linear(r, out)``.
- ``conv_channel``: the conv weight as an ``(out, in * k...)`` matrix -> a ``k x k`` conv with
  ``r`` outputs followed by a ``1 x 1`` conv (works for Conv1d and Conv2d).
- ``conv_spatial`` (Jaderberg et al., 2014): the weight as an ``(in * kh, out * kw)`` matrix ->
  a ``kh x 1`` conv with ``r`` outputs followed by a ``1 x kw`` conv (Conv2d).

``sqrt(S)`` goes to both factors so they have the same scale. At full rank each is exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from math import prod
from typing import Any

import torch
from torch import nn

from netcompress.core.registry import Registry


class LowRankAttributeError(AttributeError):
    """Code outside a :class:`LowRank` read an attribute of the layer it replaced (``weight``, ``stride``)."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__(
            f"a factorized layer (LowRank, rank {module.rank}) has no attribute {name!r}: code outside the "
            f"layer reads the {name!r} of the layer it replaced; factorize with that layer in exclude=[...], "
            "or pass example_inputs so factorize keeps such layers dense"
        )
        self.module, self.name = module, name


class LowRank(nn.Sequential):
    """Two layers replacing one: ``first`` (to ``rank`` features) then ``second``."""

    def __init__(self, first: nn.Module, second: nn.Module, *, rank: int) -> None:
        super().__init__()
        self.first, self.second = first, second
        self.rank = rank

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or "rank" not in self.__dict__:
                raise
            raise LowRankAttributeError(self, name) from None

    def extra_repr(self) -> str:
        return f"rank={self.rank}"


@dataclasses.dataclass(frozen=True)
class Factorization:
    """How to factorise one kind of layer: its matrix, its cost at rank r, its replacement."""

    matrix: Callable[[nn.Module], torch.Tensor]
    params_at_rank: Callable[[nn.Module, int], int]
    # build(layer, left (m, r) = U sqrt(S), right (r, n) = sqrt(S) V^T) -> LowRank
    build: Callable[[nn.Module, torch.Tensor, torch.Tensor], LowRank]


FACTORIZATIONS: Registry[Factorization] = Registry("low-rank factorisation")


def _bias(layer: nn.Module) -> int:
    return 0 if layer.bias is None else layer.bias.numel()


def _factory(layer: nn.Module) -> dict:
    return {"device": layer.weight.device, "dtype": layer.weight.dtype}


def _set(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    with torch.no_grad():
        module.weight.copy_(weight.reshape(module.weight.shape))
        if bias is not None:
            module.bias.copy_(bias)


def _build_linear(layer: nn.Linear, left: torch.Tensor, right: torch.Tensor) -> LowRank:
    r = right.shape[0]
    first = nn.Linear(layer.in_features, r, bias=False, **_factory(layer))
    second = nn.Linear(r, layer.out_features, bias=layer.bias is not None, **_factory(layer))
    _set(first, right)
    _set(second, left, layer.bias)
    return LowRank(first, second, rank=r)


FACTORIZATIONS.register(
    "linear",
    Factorization(
        matrix=lambda layer: layer.weight,
        params_at_rank=lambda layer, r: r * (layer.in_features + layer.out_features) + _bias(layer),
        build=_build_linear,
    ),
)


def _build_conv_channel(conv: nn.Module, left: torch.Tensor, right: torch.Tensor) -> LowRank:
    r = right.shape[0]
    # torch's own class: a subclass may take other constructor arguments (its forward is checked by the caller)
    conv_type = next(c for c in type(conv).__mro__ if c.__module__.startswith("torch.nn."))
    first = conv_type(
        conv.in_channels,
        r,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=False,
        padding_mode=conv.padding_mode,
        **_factory(conv),
    )
    second = conv_type(r, conv.out_channels, 1, bias=conv.bias is not None, **_factory(conv))
    _set(first, right)
    _set(second, left, conv.bias)
    return LowRank(first, second, rank=r)


FACTORIZATIONS.register(
    "conv_channel",
    Factorization(
        matrix=lambda conv: conv.weight.reshape(conv.out_channels, -1),
        params_at_rank=lambda conv, r: (
            r * (conv.in_channels * prod(conv.kernel_size) + conv.out_channels) + _bias(conv)
        ),
        build=_build_conv_channel,
    ),
)


def _spatial_matrix(conv: nn.Conv2d) -> torch.Tensor:
    out_ch, in_ch, kh, kw = conv.weight.shape
    # M[(c, y), (o, x)] = W[o, c, y, x]
    return conv.weight.permute(1, 2, 0, 3).reshape(in_ch * kh, out_ch * kw)


def _axis(value, axis: int, other):
    """One axis of a conv setting, the other axis set to ``other`` (strings such as 'same' pass)."""
    if isinstance(value, str):
        return value
    return (value[0], other) if axis == 0 else (other, value[1])


def _build_conv_spatial(conv: nn.Conv2d, left: torch.Tensor, right: torch.Tensor) -> LowRank:
    r = right.shape[0]
    out_ch, in_ch, kh, kw = conv.weight.shape
    vertical = nn.Conv2d(
        in_ch,
        r,
        (kh, 1),
        stride=_axis(conv.stride, 0, 1),
        padding=_axis(conv.padding, 0, 0),
        dilation=_axis(conv.dilation, 0, 1),
        bias=False,
        padding_mode=conv.padding_mode,
        **_factory(conv),
    )
    horizontal = nn.Conv2d(
        r,
        out_ch,
        (1, kw),
        stride=_axis(conv.stride, 1, 1),
        padding=_axis(conv.padding, 1, 0),
        dilation=_axis(conv.dilation, 1, 1),
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        **_factory(conv),
    )
    _set(vertical, left.t())  # (r, c * kh) -> (r, c, kh, 1)
    _set(horizontal, right.reshape(r, out_ch, kw).transpose(0, 1), conv.bias)  # -> (o, r, 1, kw)
    return LowRank(vertical, horizontal, rank=r)


FACTORIZATIONS.register(
    "conv_spatial",
    Factorization(
        matrix=_spatial_matrix,
        params_at_rank=lambda conv, r: (
            r * (conv.in_channels * conv.kernel_size[0] + conv.out_channels * conv.kernel_size[1])
            + _bias(conv)
        ),
        build=_build_conv_spatial,
    ),
)


def svd_factors(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U, S, V^T`` of ``matrix`` computed in float64 (so full rank is exact to ~1e-12)."""
    return torch.linalg.svd(matrix.detach().double(), full_matrices=False)


def factorize_layer(layer: nn.Module, *, rank: int, method: str) -> LowRank:
    """Replace one layer by its rank-``rank`` factorisation ``method`` (no skipping, no checks
    of the gain: :func:`netcompress.low_rank.factorize` decides that).

    Example:
        >>> block = factorize_layer(nn.Linear(64, 32), rank=8, method="linear")
        >>> sum(p.numel() for p in block.parameters())  # 8 * (64 + 32) + 32
        800
    """
    spec = FACTORIZATIONS.get(method)
    u, s, vh = svd_factors(spec.matrix(layer))
    root = s[:rank].sqrt()
    left = (u[:, :rank] * root).to(layer.weight.dtype)
    right = (root[:, None] * vh[:rank]).to(layer.weight.dtype)
    block = spec.build(layer, left, right)
    block.train(layer.training)
    return block
