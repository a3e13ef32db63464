"""SmoothQuant-style input scaling for Linear layers, without tracing: for models torch.fx cannot follow.

``y = W x`` equals ``(W diag(s)) (x / s)``. With ``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)``
the few outlier input channels of a transformer's Linears (LayerNorm outputs, GELU outputs) shrink,
so a per-tensor int8 activation range wastes less of its 256 steps, and the weights (quantized per
output channel) absorb the growth. On all-MiniLM-L6-v2 this halves the mean relative output error of
its 36 dynamically quantized Linears (benchmarks/RESULTS.md).

Where the ``1/s`` can fold into the producer of the input for free it does: an attention block's
output projection (``o``) reads the attention context, which is linear in the value projection's
output channels, so ``1/s`` divides the value rows and bias (blocks found by structure,
:func:`netcompress.pruning.transformer_blocks.find_blocks`). Elsewhere (a post-LayerNorm residual
stream, a GELU output) the layer becomes :class:`ScaledInputLinear`: one ``Mul`` by ``1/s`` before the
Linear. The result is checked against the original on a batch; a fold the model's forward does not
honour is an error naming the layers.

wt-nbits' ``smoothing.py`` (SmoothQuant for static PTQ through torch.fx, fold-only) is the traced
counterpart; this one also serves dynamic quantization and Hugging Face models.

Example:
    >>> smoothed, info = smooth_inputs(bert, calib_batches, alpha=0.8)
    >>> info["folded"], len(info["scaled"]), info["max_rel_diff"] < 1e-4
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import batch_inputs, call_model, output_tensor
from netcompress.core.selection import name_matches, set_submodule

# |smoothed - original| / max |original| above this on the check batch: the scaling changed the function
CHECK_TOLERANCE = 1e-3


class ScaledInputLinear(nn.Module):
    """``linear(x * inv_scale)``: a Linear whose input columns were scaled by ``1 / inv_scale``.

    The Linear stays a child (``.linear``), so quantization wraps it as any other Linear.
    """

    def __init__(self, linear: nn.Linear, inv_scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("inv_scale", inv_scale.detach().float())  # may be shared with siblings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


def input_absmax(
    model: nn.Module, loader: Iterable, names: Sequence[str], *, num_batches: int
) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Per input channel max |x| of each named Linear over ``num_batches`` batches, and the named
    Linears grouped by the input tensor they share (query/key/value read one hidden state)."""
    found: dict[str, torch.Tensor] = {}
    first_inputs: dict[str, torch.Tensor] = {}  # kept alive for the first batch, so identity is meaningful

    def keeper(name: str) -> Any:
        def keep(_m: nn.Module, args: tuple[Any, ...]) -> None:
            first_inputs.setdefault(name, args[0])
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)
            found[name] = x if name not in found else torch.maximum(found[name], x)

        return keep

    hooks = [model.get_submodule(n).register_forward_pre_hook(keeper(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in itertools.islice(loader, num_batches):
                call_model(model, batch_inputs(batch))
    finally:
        for h in hooks:
            h.remove()
    groups: dict[int, list[str]] = {}
    for name, x in first_inputs.items():
        groups.setdefault(id(x), []).append(name)
    return found, list(groups.values())


def smoothing_scale(x_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha)`` (1 where a channel or its column is all zero).

    Example:
        >>> smoothing_scale(torch.tensor([4.0, 1.0]), torch.ones(3, 2), 0.5).tolist()
        [2.0, 1.0]
    """
    w_max = weight.detach().abs().amax(0)
    s = x_absmax.clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1.0 - alpha)
    return torch.where((x_absmax > 0) & (w_max > 0), s, torch.ones_like(s)).clamp(1e-4, 1e4)


def outlier_scale(x_absmax: torch.Tensor, channels: int) -> torch.Tensor:
    """``s``: 1 on every input channel but the ``channels`` of largest ``x_absmax``, which are scaled
    down to the largest of the others (``s_j = max|x_j| / max_rest``). The weight columns absorb the
    growth; unlike :func:`smoothing_scale` no other channel moves.

    Example:
        >>> outlier_scale(torch.tensor([1.0, 8.0, 2.0]), 1).tolist()
        [1.0, 4.0, 1.0]
    """
    absmax = x_absmax.float().reshape(-1)
    if not 0 < channels < absmax.numel():
        raise ConfigError(f"outliers={channels} must be in [1, {absmax.numel() - 1}]")
    top = absmax.topk(channels).indices
    rest = absmax.clone()
    rest[top] = 0.0
    s = torch.ones_like(absmax)
    s[top] = (absmax[top] / rest.max().clamp_min(1e-12)).clamp_min(1.0)
    return s


def _value_folds(model: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """``{output projection: value projection}`` of attention blocks whose o-input is the context."""
    from netcompress.pruning.transformer_blocks import find_blocks

    folds = {}
    for unit in find_blocks(model).attention:
        if unit.layout != "linear" or unit.o not in names:
            continue
        v, o = model.get_submodule(unit.v), model.get_submodule(unit.o)
        if type(v) is nn.Linear and v.out_features == o.in_features:
            folds[unit.o] = unit.v
    return folds


def smooth_inputs(
    model: nn.Module,
    loader: Iterable,
    *,
    alpha: float = 0.8,
    num_batches: int = 4,
    layers: Sequence[str] = ("re:.*",),
    fold: bool = True,
    outliers: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` whose Linears (names or ``re:`` patterns in ``layers``) have smoothed inputs.

    ``outliers > 0``: instead of SmoothQuant's scale (``alpha`` unused), only that many input channels
    of largest range are scaled, down to the largest of the rest (:func:`outlier_scale`).

    Linears reading the same input tensor share one scale. Returns ``(smoothed, info)``: ``folded`` (``{o_proj: v_proj}`` folds), ``scaled`` (layers that got a
    ``Mul``), ``alpha`` and ``max_rel_diff`` (smoothed vs original on the first batch). ``model`` is
    never modified.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha} must be in [0, 1]")
    work = copy.deepcopy(model).eval()
    names = [
        n
        for n, m in work.named_modules()
        if n and type(m) is nn.Linear and any(name_matches(n, p) for p in layers)
    ]
    stats, groups = input_absmax(work, loader, names, num_batches=num_batches)
    folds = _value_folds(work, names) if fold else {}
    folded: dict[str, str] = {}
    scaled: list[str] = []
    with torch.no_grad():
        for group in groups:
            # one scale per shared input (the max column of all its readers), so the Linears reading it
            # share one 1/s buffer: one Mul in the exported graph after ONNX Runtime's common-subexpression pass
            linears = [work.get_submodule(n) for n in group]
            if outliers:
                s = outlier_scale(stats[group[0]], outliers)
            else:
                s = smoothing_scale(stats[group[0]], torch.cat([m.weight for m in linears]), alpha)
            inv = 1.0 / s
            for name, linear in zip(group, linears):
                linear.weight.mul_(s)
                if name in folds and len(group) == 1:
                    value = work.get_submodule(folds[name])
                    value = value.linear if isinstance(value, ScaledInputLinear) else value
                    value.weight.div_(s.unsqueeze(1))
                    if value.bias is not None:
                        value.bias.div_(s)
                    folded[name] = folds[name]
                else:
                    set_submodule(work, name, ScaledInputLinear(linear, inv))
                    scaled.append(name)
    first = batch_inputs(next(iter(loader)))
    with torch.no_grad():
        ref = output_tensor(call_model(model.eval(), first)).float()
        got = output_tensor(call_model(work, first)).float()
    rel = float((ref - got).abs().max() / ref.abs().max().clamp_min(1e-12))
    if rel > CHECK_TOLERANCE:
        raise UnsupportedModelError(
            f"input smoothing changed the model's output by {rel:.2e} of its largest value; folds "
            f"{folded or 'none'} assume the output projection reads the value projection's channels "
            "(pass fold=False to scale with a Mul instead)"
        )
    return work, {"alpha": alpha, "outliers": outliers, "folded": folded, "scaled": scaled, "max_rel_diff": rel}
