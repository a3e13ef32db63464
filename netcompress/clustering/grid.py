"""Clustered layers under quantization-aware training: centroids on the layer's integer grid.

A clustered layer wrapped for QAT (a module with ``layer`` and ``weight_fq``, see
:mod:`netcompress.quantization.modules`) computes with ``weight_fq(codebook[indices])``. Snapping
every centroid onto the quantizer's grid makes the float codebook equal the deployed values, so
the quantized layer takes at most ``k`` distinct values (one per centroid; per-tensor weight
scales, which :func:`netcompress.prepare_qat` picks for clustered layers).

Example:
    >>> qat_model = nc.prepare_qat(clustered, bits=8)     # centroids already on the grid
    >>> nc.fit(qat_model, loader, hooks=[GridClusterPreserving()])
"""

from __future__ import annotations

import torch
from torch import nn

from netcompress.clustering.weight_sharing import (
    CODEBOOK,
    INDICES,
    ClusterPreserving,
    clustered_modules,
    snap_clusters,
)


def per_tensor_for_clustered(model: nn.Module, layers: dict[str, dict] | None) -> dict[str, dict]:
    """``layers`` (per-layer quantization settings) with ``granularity: per_tensor`` for every clustered
    layer of ``model`` unless set there: one scale per tensor keeps k shared values k quantized values
    (per-channel scales would give up to k per channel). PTQ and QAT plan with this.

    Example:
        >>> per_tensor_for_clustered(clustered_model, {})
        {'features.0': {'granularity': 'per_tensor'}, ...}
    """
    layers = dict(layers or {})
    for name, _ in clustered_modules(model):
        layers[name] = {"granularity": "per_tensor", **layers.get(name, {})}
    return layers


def snap_codebooks_to_grid(model: nn.Module) -> list[str]:
    """Put each clustered, per-tensor fake-quantized layer's centroids on its quantization grid
    (IN PLACE; weights follow); return the names of the layers snapped.

    Example:
        >>> snap_codebooks_to_grid(qat_model)
        ['features.0', 'features.3']
    """
    snapped = []
    with torch.no_grad():
        for name, module in model.named_modules():
            layer, fq = getattr(module, "layer", None), getattr(module, "weight_fq", None)
            codebook = getattr(layer, CODEBOOK, None) if isinstance(layer, nn.Module) else None
            if codebook is None or fq is None or getattr(fq.spec, "granularity", None) != "per_tensor":
                continue
            if getattr(fq, "observing", False):
                fq(layer.weight.detach())  # the grid of the current weights
            observing, fq.observing = getattr(fq, "observing", False), False
            try:
                codebook.copy_(fq(codebook))
            finally:
                fq.observing = observing
            layer.weight.copy_(codebook[getattr(layer, INDICES).long()].view_as(layer.weight))
            snapped.append(name)
    return snapped


class GridClusterPreserving(ClusterPreserving):
    """:class:`ClusterPreserving` for QAT: shared gradients, then centroids re-snapped to the grid.

    Example:
        >>> nc.fit(qat_model, loader, hooks=[GridClusterPreserving()])
    """

    def after_step(self, model: nn.Module) -> None:
        snap_clusters(model)
        snap_codebooks_to_grid(model)
