"""The cluster loss regulariser ``sum_w min_c (w - c)^2``: pulls weights toward centroids.

Trained with it before (or instead of) hard clustering, weights gather around the
centroids, so snapping them later loses less accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from netcompress.clustering.kmeans import KMEANS_INITS, kmeans_1d, nearest_centroid
from netcompress.clustering.weight_sharing import CLUSTER_TYPES, one_per_weight
from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.selection import select_modules


def cluster_distance(weight: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``sum_w min_c (w - c)^2`` for one weight tensor (differentiable in ``weight``).

    Example:
        >>> cluster_distance(torch.tensor([0.0, 0.4, 1.2]), torch.tensor([0.0, 1.0]))  # 0 + .16 + .04
        tensor(0.2000)
    """
    centroids = codebook.detach().to(weight.dtype).sort().values
    nearest = centroids[nearest_centroid(weight.detach().flatten(), centroids)]
    return (weight.flatten() - nearest).pow(2).sum()


class ClusterLoss:
    """Training hook adding ``weight * sum_layers sum_w min_c (w - c)^2`` to the loss.

    Centroids are fixed per epoch: given in ``codebooks`` ({layer name: 1-D tensor}), else
    taken from a clustered layer's ``weight_codebook``, else found by 1-D k-means on the
    layer's current weights at every ``epoch_start`` (and on first use). ``epoch_end``
    reports the epoch's last penalty as ``cluster_loss``.

    Example:
        >>> fit(model, loader, hooks=[ClusterLoss(1e-3, clusters=16)])
        >>> cluster_weights_(model, clusters=16)  # snapping now moves the weights little
    """

    def __init__(
        self,
        weight: float,
        *,
        clusters: int = 16,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        init: str = "linear",
        seed: int = 0,
        codebooks: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        check_range("weight", weight, 0.0)
        check_range("clusters", clusters, 1)
        check_choice("init", init, KMEANS_INITS.names())
        self.weight = float(weight)
        self.clusters, self.init, self.seed = clusters, init, seed
        self.include, self.exclude = include, tuple(exclude)
        self.fixed = dict(codebooks) if codebooks is not None else None
        self.codebooks: dict[str, torch.Tensor] = {}
        self.last_penalty = 0.0

    def refresh(self, model: nn.Module) -> None:
        """Recompute the centroids of every selected layer from its current weights."""
        layers = select_modules(model, types=CLUSTER_TYPES, include=self.include, exclude=self.exclude)
        if not layers:
            raise ConfigError(
                f"ClusterLoss: no Linear/Conv1d/Conv2d/Conv3d layer selected in {type(model).__name__} "
                f"(include={self.include}, exclude={list(self.exclude)})"
            )
        if self.fixed is not None:
            missing = [n for n in self.fixed if n not in layers]
            if missing:
                raise ConfigError(f"ClusterLoss codebooks name layers the model lacks: {missing}")
            self.codebooks = {n: c for n, c in self.fixed.items()}
            return
        self.codebooks = {}
        for name, module in one_per_weight(model, layers)[0].items():  # a tied weight is penalised once
            stored = getattr(module, "weight_codebook", None)
            self.codebooks[name] = (
                stored.detach().clone()
                if stored is not None
                else kmeans_1d(module.weight, clusters=self.clusters, init=self.init, seed=self.seed)[0]
            )

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The unweighted ``sum_w min_c (w - c)^2`` over the selected layers.

        Example:
            >>> ClusterLoss(1.0, codebooks={"0": torch.tensor([0.0, 1.0])}).penalty(model)
        """
        if not self.codebooks:
            self.refresh(model)
        terms = [cluster_distance(model.get_submodule(n).weight, c) for n, c in self.codebooks.items()]
        return torch.stack(terms).sum()

    def loss(self, model: nn.Module, inputs: Any, outputs: Any, targets: torch.Tensor, loss: torch.Tensor):
        penalty = self.penalty(model)
        self.last_penalty = penalty.detach()
        return loss + self.weight * penalty

    def epoch_start(self, model: nn.Module, epoch: int) -> None:
        self.refresh(model)

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {"cluster_loss": float(self.last_penalty)}
