"""Kernel-level pruning: mask whole ``kh x kw`` kernels (one input channel of one filter) of a convolution.

Between channel pruning (whole filters) and unstructured pruning (single weights): a conv weight
``(out, in, kh, kw)`` holds ``out * in`` kernels; the ``amount`` of them with the lowest L2 norm are
masked in every selected layer. Unstructured pruning afterwards (``prune_unstructured_``, which counts
masked weights as pruned) then thins the kept kernels. The point is the Deep-Compression file: a mask
whose zeros come in whole kernels has long runs, which its gap coder stores in fewer bits per kept
weight than the same count of scattered zeros (Mao et al. 2017, "Exploring the granularity of
sparsity in CNNs").

The pattern is the usual boolean ``weight_mask`` (:mod:`netcompress.pruning.masks`): it combines with
an existing mask, and kernels already fully masked count as pruned (masks only grow). Layers without a
spatial kernel (``1 x 1`` convs, Linear) are left alone and named in the summary.

Example:
    >>> summary = prune_kernels_(model, amount=0.5, exclude=["conv1"])
    >>> summary["per_layer"]["layer1.0.conv1"]["kernel_sparsity"]
    0.5
    >>> prune_unstructured_(model, amount=0.9, scope="layer")  # then thin the kept kernels
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netcompress.core.config import check_range
from netcompress.core.errors import ConfigError
from netcompress.core.selection import select_modules
from netcompress.pruning.masks import MASK_SUFFIX, apply_mask


def kernel_keep(weight: torch.Tensor, mask: torch.Tensor | None, amount: float) -> torch.Tensor:
    """Boolean ``(out, in)`` keep-mask dropping exactly ``round(amount * out * in)`` kernels, lowest L2
    norm first; kernels already fully masked rank below every live one (ties in position order).

    Example:
        >>> kernel_keep(conv.weight, None, 0.25).float().mean()
        tensor(0.7500)
    """
    live = weight.detach() if mask is None else weight.detach() * mask
    norms = live.float().flatten(2).norm(dim=2).flatten().cpu()
    if mask is not None:
        norms[~mask.flatten(2).any(dim=2).flatten().cpu()] = -1.0
    k = int(round(amount * norms.numel()))
    keep = torch.ones(norms.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.sort(norms, stable=True).indices[:k]] = False
    return keep.view(weight.shape[0], weight.shape[1])


def prune_kernels_(
    model: nn.Module,
    *,
    amount: float,
    include: list[str] | None = None,
    exclude: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Mask the ``amount`` lowest-L2 kernels of every selected Conv2d IN PLACE (per layer); return a summary.

    ``include`` / ``exclude`` take layer names or ``re:`` patterns (an ``include`` entry matching no
    Conv2d is an error). The summary holds, per pruned layer, ``kernel_sparsity`` (kernels fully masked)
    and ``sparsity`` (weights masked), and ``skipped``: the selected layers without a spatial kernel.

    Example:
        >>> prune_kernels_(model, amount=0.6, include=["re:layer3\\..*"])["per_layer"]
    """
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise ConfigError(f"amount={amount!r} must be a number in [0, 1)")
    check_range("amount", float(amount), 0.0)
    if amount >= 1.0:
        raise ConfigError(f"amount={amount!r} must be below 1: it would mask every kernel of a layer")
    layers = select_modules(model, types=(nn.Conv2d,), include=include, exclude=exclude)
    if not layers:
        raise ConfigError(f"no Conv2d layer selected (include={include}, exclude={list(exclude)})")
    per_layer: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    for name, conv in layers.items():
        weight = conv.weight
        if weight.shape[2] * weight.shape[3] == 1:
            skipped[name] = "1 x 1 kernel: kernel pruning is unstructured pruning there"
            continue
        keep = kernel_keep(weight, conv._buffers.get("weight" + MASK_SUFFIX), float(amount))
        apply_mask(conv, "weight", keep[:, :, None, None].expand_as(weight).to(weight.device))
        mask = conv._buffers["weight" + MASK_SUFFIX]
        per_layer[name] = {
            "kernel_sparsity": round(1.0 - float(mask.flatten(2).any(dim=2).float().mean()), 6),
            "sparsity": round(1.0 - float(mask.float().mean()), 6),
        }
    if not per_layer:
        raise ConfigError(f"no selected Conv2d has a spatial kernel: {', '.join(skipped)}")
    return {"amount": float(amount), "per_layer": per_layer, "skipped": skipped}
