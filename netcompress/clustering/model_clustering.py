"""Clustering a whole model: :class:`ClusterConfig`, the method ``cluster/kmeans`` and the
``cluster_weights_`` verb (``cluster_weights`` is its alias).

In a recipe::

    - op: cluster
      method: kmeans
      clusters: 16
      exclude: [classifier]
"""

from __future__ import annotations

import dataclasses
from math import ceil
from typing import Any

from torch import nn

from netcompress.clustering.kmeans import KMEANS_INITS
from netcompress.clustering.storage import save_clustered
from netcompress.clustering.weight_sharing import CLUSTER_TYPES, cluster_module, one_per_weight
from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, Result, apply, register_method
from netcompress.core.selection import name_matches, select_modules


@dataclasses.dataclass
class ClusterConfig(Config):
    """k-means weight sharing: codebook size, layers, initialisation.

    ``save`` writes the packed file ``clustered.pt`` into the method's folder (a recipe step's
    folder; the Python verb has none and writes nothing).

    Example:
        >>> ClusterConfig(clusters=16, init="kmeans++")
    """

    clusters: int = 16
    include: list[str] | None = None
    exclude: list[str] = dataclasses.field(default_factory=list)
    init: str = "linear"
    seed: int = 0
    save: bool = True
    preserve_zeros: bool = True
    fold_bn: bool = False
    cluster_loss: float = 0.0
    cluster_loss_epochs: int = 1
    lr: float = 0.01

    def __post_init__(self) -> None:
        check_range("clusters", self.clusters, 1)
        check_choice("init", self.init, KMEANS_INITS.names())
        check_range("cluster_loss", self.cluster_loss, 0.0)
        check_range("cluster_loss_epochs", self.cluster_loss_epochs, 1)


def fold_bn_(model: nn.Module, example_inputs: Any = None) -> list[list[str]]:
    """Fold every ``Conv/Linear -> BatchNorm`` pair of ``model`` IN PLACE (the BN becomes ``Identity``);
    return the folded pairs. Clustering after this keeps its sharing through PTQ/QAT, which fold BN.
    A model without BatchNorm has nothing to fold (no trace); ``example_inputs`` lets a model with
    shape checks trace.

    Example:
        >>> fold_bn_(model.eval())
        [['features.0', 'features.1'], ...]
    """
    from netcompress.core.selection import set_submodule
    from netcompress.quantization.bn_folding import fold_bn_into

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return []
    pairs = _bn_pairs(model, example_inputs)
    for layer_name, bn_name in pairs:
        fold_bn_into(model.get_submodule(layer_name), model.get_submodule(bn_name))
        set_submodule(model, bn_name, nn.Identity())
    return pairs


def _bn_pairs(model: nn.Module, example_inputs: Any = None) -> list[list[str]]:
    from netcompress.quantization.bn_folding import fold_bn_and_report

    return fold_bn_and_report(model, example_inputs=example_inputs)[1]["folded"]


def _cluster_loss_training(model: nn.Module, config: ClusterConfig, data: MethodData) -> dict[str, Any]:
    """Train with the cluster loss (``sum_w min_c (w - c)^2``) so weights gather before snapping."""
    from netcompress.clustering.regularizer import ClusterLoss
    from netcompress.training import TrainConfig, fit
    from netcompress.training.supervised import run_config

    hook = ClusterLoss(
        config.cluster_loss,
        clusters=config.clusters,
        include=config.include,
        exclude=config.exclude,
        init=config.init,
        seed=config.seed,
    )
    # the run's device (cuda:LOCAL_RANK under torchrun) and progress setting, as every other step
    train = run_config(TrainConfig(epochs=config.cluster_loss_epochs, lr=config.lr, seed=config.seed), data)
    history = fit(model, data.train_loader, val_loader=data.val_loader, config=train, hooks=[hook])
    return {
        "cluster_loss_epochs": config.cluster_loss_epochs,
        "final_cluster_loss": float(hook.last_penalty),
        "rows": list(getattr(history, "rows", [])),
    }


def _class(cls: type) -> str:
    """torch.nn's classes by name, others with their module (PyG's own ``Linear`` is no ``nn.Linear``)."""
    return cls.__name__ if cls.__module__.startswith("torch.nn.") else f"{cls.__module__}.{cls.__name__}"


def _others(model: nn.Module) -> str:
    """The weighted layer types the model has instead, for a refusal (ConvTranspose, Embedding, HF Conv1D)."""
    weighted = [m for m in model.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)]
    kinds = sorted({_class(type(m)) for m in weighted if m.weight.dim() >= 2})
    return f"; {type(model).__name__}'s weighted layers are {', '.join(kinds)}, not clustered" if kinds else ""


@register_method("cluster", "kmeans", config=ClusterConfig)
def kmeans(model: nn.Module, config: ClusterConfig, data: MethodData) -> Result:
    """Per-layer k-means weight sharing (codebook + indices), kept through fine-tuning; in place."""
    folded = fold_bn_(model, data.example_inputs) if config.fold_bn else []
    chosen = select_modules(model, types=CLUSTER_TYPES, include=config.include, exclude=config.exclude)
    if not chosen:
        raise ConfigError(f"cluster_weights: no Linear/Conv1d/Conv2d/Conv3d layer selected{_others(model)}")
    owners, tied = one_per_weight(model, chosen)
    pretraining: dict[str, Any] = {}
    if config.cluster_loss > 0:
        if data.train_loader is None:
            raise ConfigError("cluster_weights: cluster_loss > 0 trains first and needs a train_loader")
        pretraining = _cluster_loss_training(model, config, data)
    layers = [
        {
            "name": name,
            **cluster_module(
                m,
                clusters=config.clusters,
                init=config.init,
                seed=config.seed,
                preserve_zeros=config.preserve_zeros,
            ),
        }
        for name, m in owners.items()
    ]
    for row in layers:  # a weight shared by several layers is clustered and counted once, the tie kept
        if row["name"] in tied:
            row["tied"] = tied[row["name"]]
    dense = sum(r["dense_bits"] for r in layers)
    packed = sum(r["clustered_bits"] for r in layers)
    summary: dict[str, Any] = {
        "method": "kmeans",
        "clusters": config.clusters,
        "init": config.init,
        "layers": layers,
        "clustered_weights": sum(r["weights"] for r in layers),
        "dense_weight_bytes": dense // 8,
        "clustered_weight_bytes": ceil(packed / 8),
        "compression_ratio": dense / packed,
        "bn_folded": folded,
        # weights of other layer types stay dense (HF GPT-2's Conv1D, Conv3d, ConvTranspose, Embedding): named
        "not_clustered": {
            n: type(m).__name__
            for n, m in model.named_modules()
            if not isinstance(m, CLUSTER_TYPES)
            and isinstance(getattr(m, "weight", None), nn.Parameter)
            and all(m.weight is not c.weight for c in chosen.values())  # not tied to a clustered one
            and m.weight.dim() >= 2
            and not any(name_matches(n, p) for p in config.exclude)
        },
    }
    history = pretraining.pop("rows", [])
    summary.update(pretraining)
    if config.save and data.out_dir is not None:
        saved = save_clustered(model, data.out_dir / "clustered.pt")
        summary["file"] = saved["path"]
        summary["size_bytes"] = saved["size_bytes"]
    return Result(model=model, summary=summary, history=history)


def cluster_weights_(
    model: nn.Module, config: ClusterConfig | None = None, *, example_inputs: Any = None, **fields: Any
) -> dict[str, Any]:
    """Cluster the weights of Linear/Conv1d/Conv2d/Conv3d layers IN PLACE; return a summary.

    ``fields`` are :class:`ClusterConfig` fields (``clusters``, ``include``, ``exclude``,
    ``init``: linear / kmeans++ / density, ``seed``, ``preserve_zeros``: zero is its own centroid so
    pruned weights stay zero, ``fold_bn``: fold BatchNorm into the layers first so PTQ/QAT keep the
    sharing (``example_inputs`` lets a model with shape checks trace for it), ``cluster_loss`` > 0: first train ``cluster_loss_epochs`` with that regulariser weight);
    they override ``config``. Per layer, 1-D k-means (``init``: "linear"
    between min and max, or "kmeans++") finds ``clusters`` centroids; every weight becomes its
    centroid, and ``weight_codebook`` / ``weight_indices`` buffers plus a ``ClusterSharing``
    pre-hook keep it that way through fine-tuning. Biases are left alone. Clustering a clustered
    layer again replaces its codebook. The summary estimates storage: ``ceil(log2 k)`` bits per
    weight plus the codebook.

    Example:
        >>> summary = nc.cluster_weights_(model, clusters=16, exclude=["classifier"])
        >>> summary["compression_ratio"]  # dense bits / (index bits + codebook bits)
    """
    base = config.to_dict() if config is not None else {}
    cfg = ClusterConfig.from_dict({**base, **fields}, where="cluster_weights")
    return apply(model, cfg, MethodData(example_inputs=example_inputs)).summary


def cluster_weights(
    model: nn.Module, config: ClusterConfig | None = None, *, example_inputs: Any = None, **fields: Any
) -> dict[str, Any]:
    """Alias of :func:`cluster_weights_` (clusters IN PLACE, returns the summary).

    Example:
        >>> summary = nc.cluster_weights(model, clusters=16)
    """
    return cluster_weights_(model, config, example_inputs=example_inputs, **fields)
