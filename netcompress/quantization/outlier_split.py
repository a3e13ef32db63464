"""LLM.int8()-style decomposition: a Linear's few outlier input channels in float, the rest in int8.

A transformer's Linears often read inputs whose range is set by a handful of channels (the GELU
outputs feeding BERT's FFN output projections reach 10-20x the median channel's range on
all-MiniLM-L6-v2). With one dynamic uint8 range per tensor those channels leave the other channels
a few steps each. Splitting ``y = W x`` into

    y = W_rest (x * keep) + W[:, outliers] x[..., outliers]

(``keep``: 1 on ordinary channels, 0 on the outliers; ``W_rest``: ``W`` with the outlier columns
zeroed) keeps the function exact in float; quantizing then sees only ``x * keep`` and ``W_rest``
(Dettmers et al., 2022, with the outliers chosen once on calibration data rather than per batch).

:class:`OutlierSplitLinear` holds the Linear as a child (``.linear``), so ``nc.quantize(...,
mode="dynamic")`` wraps it as any other Linear and the ONNX export gives
``Mul(x, keep) -> DynamicQuantizeLinear -> MatMulInteger -> ...`` plus ``Gather(x, outliers) ->
MatMul`` and one ``Add``. A Linear already smoothed (:class:`~netcompress.quantization.input_smoothing.
ScaledInputLinear`) merges: ``keep`` carries the smoothing scale, one ``Mul`` for both.

Example:
    >>> split, info = split_outliers(bert, calib_batches, layers=["re:.*output.dense"], channels=8)
    >>> info["layers"]["encoder.layer.0.output.dense"]["channels"], info["max_rel_diff"] < 1e-4
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import batch_inputs, call_model, output_tensor
from netcompress.core.selection import name_matches, set_submodule
from netcompress.quantization.input_smoothing import CHECK_TOLERANCE, ScaledInputLinear, input_absmax


class OutlierSplitLinear(nn.Module):
    """``linear(x * keep) + x[..., outliers] @ outlier_weight.T``.

    ``linear`` is the Linear with its outlier input columns zeroed (quantized like any other Linear);
    ``keep`` is 0 on the outlier channels and the input scale elsewhere (1, or a smoothing ``1/s``);
    ``outlier_weight`` (out, k) the float columns that read the outliers. ``range_kept``: the largest
    max |x| left to the int8 path over the largest before the split (on the data it was chosen on).
    """

    range_kept: float = 1.0

    def __init__(
        self, linear: nn.Linear, keep: torch.Tensor, outliers: torch.Tensor, outlier_weight: torch.Tensor
    ) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("keep", keep.detach().float().clone())
        self.register_buffer("outliers", outliers.detach().long().clone())
        self.register_buffer("outlier_weight", outlier_weight.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        float_part = F.linear(x.index_select(-1, self.outliers), self.outlier_weight)
        return self.linear(x * self.keep) + float_part


def _plain_linear(module: nn.Module) -> tuple[nn.Linear, torch.Tensor | None] | None:
    """``(linear, input scale)`` of a Linear or a smoothed Linear; None for anything else."""
    if type(module) is nn.Linear:
        return module, None
    if isinstance(module, ScaledInputLinear) and type(module.linear) is nn.Linear:
        return module.linear, module.inv_scale
    return None


def split_linear(module: nn.Module, absmax: torch.Tensor, channels: int) -> OutlierSplitLinear:
    """``module`` (a Linear or :class:`ScaledInputLinear`) split at its ``channels`` input channels of
    largest ``absmax`` (max |x| of its input, as the quantizer would see it: after any smoothing).

    Example:
        >>> split_linear(nn.Linear(8, 4), torch.arange(8.0), 2).outliers.tolist()
        [7, 6]
    """
    found = _plain_linear(module)
    if found is None:
        raise UnsupportedModelError(f"cannot split {type(module).__name__}: a Linear is needed")
    linear, inv = found
    width = linear.in_features
    if not 0 < channels < width:
        raise ConfigError(f"channels={channels} must be in [1, {width - 1}] for a Linear with {width} inputs")
    scale = torch.ones(width) if inv is None else inv.detach().float().reshape(-1).expand(width)
    order = absmax.float().reshape(-1).topk(channels).indices
    work = copy.deepcopy(linear)
    with torch.no_grad():
        outlier_weight = work.weight[:, order] * scale[order]  # reads raw x: undo the smoothing on them
        work.weight[:, order] = 0.0
    keep = scale.clone()
    keep[order] = 0.0
    split = OutlierSplitLinear(work, keep, order, outlier_weight)
    rest = absmax.float().reshape(-1).clone()
    rest[order] = 0.0
    split.range_kept = float(rest.max() / absmax.max().clamp_min(1e-12))
    return split


def split_target(model: nn.Module, name: str) -> str | None:
    """The module to replace for the Linear ``name`` (itself, or the smoothing wrapper around a
    ``.linear``); None when ``name`` is neither a Linear nor a smoothed one."""
    parent = name.rsplit(".", 1)[0] if name.endswith(".linear") else None
    if parent is not None and isinstance(model.get_submodule(parent), ScaledInputLinear):
        name = parent
    return name if _plain_linear(model.get_submodule(name)) is not None else None


def prepare_splits(
    model: nn.Module, loader: Iterable, names: Sequence[str], *, channels: int, num_batches: int
) -> dict[str, OutlierSplitLinear]:
    """``{module name: its split form}`` for the Linears ``names`` (see :func:`split_target`), their
    outlier channels ranked on ``num_batches`` batches of ``loader``; ``model`` is not modified.

    Linears reading one input tensor (query, key, value) share one ``keep`` and one index tensor
    when theirs agree, so the export holds one ``Mul`` and one ``Gather`` for them.
    """
    targets = list(dict.fromkeys(t for n in names if (t := split_target(model, n)) is not None))
    stats, groups = input_absmax(model, loader, targets, num_batches=num_batches)
    out = {}
    for name in targets:
        module = model.get_submodule(name)
        _, inv = _plain_linear(module)
        seen = stats[name] if inv is None else stats[name] * inv.reshape(-1)
        out[name] = split_linear(module, seen, channels)
    for group in groups:
        first = out[group[0]]
        for name in group[1:]:
            split = out[name]
            if torch.equal(split.outliers, first.outliers) and torch.equal(split.keep, first.keep):
                split.keep, split.outliers = first.keep, first.outliers
    return out


def prepare_split_layers(
    model: nn.Module, loader: Iterable, names: Sequence[str], *, channels: int, num_batches: int
) -> dict[str, tuple[str, OutlierSplitLinear]]:
    """``{Linear name: (module to replace, its split form)}`` for ``names`` (the layer names of the
    quantized model, as accuracy-aware PTQ ranks them), prepared together by :func:`prepare_splits`."""
    targets = {n: t for n in names if (t := split_target(model, n)) is not None}
    splits = prepare_splits(model, loader, list(targets), channels=channels, num_batches=num_batches)
    return {n: (t, splits[t]) for n, t in targets.items()}


def apply_splits(model: nn.Module, splits: dict[str, OutlierSplitLinear]) -> nn.Module:
    """A copy of ``model`` with the named modules replaced by copies of their split forms (copied
    together, so tensors they share stay shared)."""
    work = copy.deepcopy(model)
    for name, split in copy.deepcopy(splits).items():
        set_submodule(work, name, split)
    return work


def split_outliers(
    model: nn.Module,
    loader: Iterable,
    *,
    layers: Sequence[str],
    channels: int = 8,
    num_batches: int = 4,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` whose Linears named by ``layers`` (names or ``re:`` patterns; a smoothed
    Linear is named by its wrapper or its ``.linear``) compute their ``channels`` outlier input
    channels (largest max |x| over ``num_batches`` batches of ``loader``) in float.

    Returns ``(split, info)``: ``info["layers"]`` maps each split layer to its outlier channels and
    ``range_kept`` (largest remaining max |x| over the largest before), ``max_rel_diff`` is the split
    model against the original on the first batch. ``model`` is never modified; a pattern matching
    no Linear is an error naming it.
    """
    model.eval()
    names: list[str] = []
    for pattern in layers:
        hits = [
            n for n, _ in model.named_modules() if n and name_matches(n, pattern) and split_target(model, n)
        ]
        if not hits:
            raise ConfigError(f"outlier split: no Linear matches {pattern!r}")
        names += hits
    splits = prepare_splits(model, loader, names, channels=channels, num_batches=num_batches)
    work = apply_splits(model, splits)
    info: dict[str, Any] = {"channels": channels, "layers": {}}
    for name, split in splits.items():
        info["layers"][name] = {"channels": split.outliers.tolist(), "range_kept": split.range_kept}
    first = batch_inputs(next(iter(loader)))
    with torch.no_grad():
        ref = output_tensor(call_model(model, first)).float()
        got = output_tensor(call_model(work, first)).float()
    rel = float((ref - got).abs().max() / ref.abs().max().clamp_min(1e-12))
    if rel > CHECK_TOLERANCE:
        raise UnsupportedModelError(
            f"outlier split changed the model's output by {rel:.2e} of its largest value"
        )
    info["max_rel_diff"] = rel
    return work, info
