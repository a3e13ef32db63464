"""Recipe step ``cluster/kmeans``: k-means weight sharing, optionally saved in packed form.

In a recipe::

    - op: cluster
      method: kmeans
      clusters: 16
      exclude: [classifier]
"""

from __future__ import annotations

import dataclasses

from torch import nn

from netcompress.clustering.kmeans import KMEANS_INITS
from netcompress.clustering.storage import save_clustered
from netcompress.clustering.weight_sharing import cluster_weights
from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.methods import MethodData, Result, register_method


@dataclasses.dataclass
class ClusterConfig(Config):
    """k-means weight sharing: codebook size, layers, initialisation; ``save`` writes the packed file.

    Example:
        >>> ClusterConfig(clusters=16, init="kmeans++")
    """

    clusters: int = 16
    include: list[str] | None = None
    exclude: list[str] = dataclasses.field(default_factory=list)
    init: str = "linear"
    seed: int = 0
    save: bool = True

    def __post_init__(self) -> None:
        check_range("clusters", self.clusters, 1)
        check_choice("init", self.init, KMEANS_INITS.names())


@register_method("cluster", "kmeans", config=ClusterConfig)
def _kmeans_step(model: nn.Module, config: ClusterConfig, ctx: MethodData) -> Result:
    """Per-layer k-means weight sharing (codebook + indices), kept through fine-tuning."""
    summary = cluster_weights(
        model,
        clusters=config.clusters,
        include=config.include,
        exclude=config.exclude,
        init=config.init,
        seed=config.seed,
    )
    if config.save:
        saved = save_clustered(model, ctx.out_dir / "clustered.pt")
        summary["file"] = saved["path"]
        summary["size_bytes"] = saved["size_bytes"]
    return Result(model=model, summary=summary)
