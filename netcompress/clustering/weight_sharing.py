"""Weight clustering: each layer's weights share a small codebook (k-means weight sharing).

``cluster_weights_`` (:mod:`netcompress.clustering.model_clustering`) replaces every weight of a chosen layer by the nearest of ``k``
centroids and stores, on the module, the ``weight_codebook`` (k floats) and
``weight_indices`` (one small integer per weight) as buffers. A picklable forward pre-hook
(:class:`ClusterSharing`) keeps the sharing during fine-tuning: when the weight has changed
since the last forward (an optimiser step), each centroid moves to the mean of its weights
and the weights snap back onto the codebook. For plain SGD that is exactly a step with the
per-centroid averaged gradient; :class:`ClusterPreserving` averages the gradients
themselves, which keeps the sharing exact under any optimiser (momentum, Adam).
"""

from __future__ import annotations

from collections.abc import Iterator
from math import ceil, log2
from typing import Any

import torch
from torch import nn

from netcompress.clustering.kmeans import kmeans_1d

CODEBOOK = "weight_codebook"
INDICES = "weight_indices"
CLUSTER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # the layers clustering selects (their weight only)
KEEP_ZERO = "cluster_keep_zero"  # module attribute: the codebook's 0.0 entry stays 0 (pruned weights)


def index_bits(clusters: int) -> int:
    """Bits per stored index for a codebook of ``clusters`` entries (at least 1).

    Example:
        >>> index_bits(16), index_bits(17), index_bits(1)
        (4, 5, 1)
    """
    return max(1, ceil(log2(clusters))) if clusters > 1 else 1


def _index_dtype(clusters: int) -> torch.dtype:
    return torch.uint8 if clusters <= 256 else torch.int32


def snap_module(module: nn.Module) -> None:
    """Move each centroid to the mean of its weights, then set every weight to its centroid."""
    with torch.no_grad():
        weight, codebook = module.weight, getattr(module, CODEBOOK)
        idx = getattr(module, INDICES).long().flatten()
        flat = weight.detach().flatten().double()
        sums = torch.zeros(codebook.numel(), dtype=torch.float64, device=flat.device).index_add_(0, idx, flat)
        counts = torch.bincount(idx, minlength=codebook.numel())
        means = (sums / counts.clamp_min(1)).to(codebook.dtype)
        pinned = (
            (codebook == 0)
            if getattr(module, KEEP_ZERO, False)
            else torch.zeros_like(counts, dtype=torch.bool)
        )
        codebook.copy_(torch.where((counts > 0) & ~pinned, means, codebook))
        weight.copy_(codebook[idx].view_as(weight))


class ClusterSharing:
    """Forward pre-hook keeping a clustered layer's weights on its codebook.

    It re-snaps only when the weight tensor changed since its last visit (tracked through the
    tensor's version counter), so inference and ONNX tracing of an unchanged model run no
    extra ops. A module-level class, so clustered models deepcopy and pickle.
    """

    def __init__(self) -> None:
        self._seen: tuple[int, int] | None = None

    def __call__(self, module: nn.Module, args: Any) -> None:
        weight = module.weight
        if self._seen == (weight._version, weight.data_ptr()):
            return None
        snap_module(module)
        self._seen = (weight._version, weight.data_ptr())
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {"_seen": None}  # a copy has new tensors: check again on its first forward


def _sharing_keys(module: nn.Module) -> list[int]:
    return [k for k, hook in module._forward_pre_hooks.items() if isinstance(hook, ClusterSharing)]


def clustered_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer carrying a codebook and indices.

    Example:
        >>> [name for name, _ in clustered_modules(model)]
    """
    for name, module in model.named_modules():
        if hasattr(module, CODEBOOK) and hasattr(module, INDICES):
            yield name, module


def one_per_weight(
    model: nn.Module, chosen: dict[str, nn.Module]
) -> tuple[dict[str, nn.Module], dict[str, list[str]]]:
    """The layers of ``chosen`` with one per distinct weight Parameter (the first by name order), and for each
    kept layer the other layers of ``model`` using the same Parameter (tied weights: clustered once, through
    the first; the tie is kept, the partners run on the shared clustered tensor).

    Example:
        >>> owners, tied = one_per_weight(lm, select_modules(lm))   # lm.head.weight is lm.embed.weight
        >>> tied
        {'embed': ['head']}
    """
    owners: dict[str, nn.Module] = {}
    seen: dict[int, str] = {}
    for name, module in chosen.items():
        if id(module.weight) not in seen:
            seen[id(module.weight)] = name
            owners[name] = module
    tied: dict[str, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        owner = seen.get(id(getattr(module, "weight", None)))
        if owner is not None and name != owner:
            tied.setdefault(owner, []).append(name)
    return owners, tied


def _kmeans_keeping_zero(
    weight: torch.Tensor, *, clusters: int, init: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on the non-zero weights with ``clusters - 1`` centroids, plus 0.0 for the zeros."""
    flat = weight.detach().flatten()
    nonzero = flat != 0
    if bool(nonzero.all()) or clusters < 2 or not bool(nonzero.any()):
        return kmeans_1d(weight, clusters=clusters, init=init, seed=seed)
    others, other_idx = kmeans_1d(flat[nonzero], clusters=clusters - 1, init=init, seed=seed)
    codebook, order = torch.cat([others.new_zeros(1), others]).sort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    idx = torch.full_like(flat, int(rank[0]), dtype=torch.int64)
    idx[nonzero] = rank[other_idx + 1]
    return codebook, idx


def cluster_module(
    module: nn.Module, *, clusters: int, init: str = "linear", seed: int = 0, preserve_zeros: bool = True
) -> dict[str, Any]:
    """Cluster one layer's weight IN PLACE (see ``cluster_weights_``); return its summary row.

    With ``preserve_zeros`` (and a weight holding zeros, e.g. a pruned one) 0.0 is a centroid of its
    own that fine-tuning never moves, and the other ``clusters - 1`` are fitted to the non-zero
    weights: pruned positions stay exactly zero.

    Example:
        >>> cluster_module(nn.Linear(64, 32), clusters=16)["clusters"]
        16
    """
    weight = module.weight
    for key in _sharing_keys(module):
        del module._forward_pre_hooks[key]
    if preserve_zeros:
        codebook, idx = _kmeans_keeping_zero(weight, clusters=clusters, init=init, seed=seed)
    else:
        codebook, idx = kmeans_1d(weight, clusters=clusters, init=init, seed=seed)
    setattr(module, KEEP_ZERO, bool(preserve_zeros and (codebook == 0).any()))
    with torch.no_grad():
        before = weight.detach().clone()
        weight.copy_(codebook[idx].view_as(weight))
        mse = float((weight.detach() - before).double().pow(2).mean())
    module.register_buffer(CODEBOOK, codebook.to(weight.device))
    module.register_buffer(INDICES, idx.view_as(weight).to(_index_dtype(codebook.numel())).to(weight.device))
    module.register_forward_pre_hook(ClusterSharing())
    k = codebook.numel()
    return {
        "weights": weight.numel(),
        "clusters": k,
        "bits": index_bits(k),
        "weight_mse": mse,
        "dense_bits": weight.numel() * weight.element_size() * 8,
        "clustered_bits": weight.numel() * index_bits(k) + k * codebook.element_size() * 8,
    }


def snap_clusters(model: nn.Module) -> int:
    """Re-snap every clustered layer of ``model`` IN PLACE (centroid = mean of its weights);
    return how many layers. Call before reading weights outside a forward pass.

    Example:
        >>> snap_clusters(model)
    """
    count = 0
    for _, module in clustered_modules(model):
        snap_module(module)
        count += 1
    return count


def strip_clustering(model: nn.Module) -> int:
    """Remove codebooks, indices and pre-hooks IN PLACE, leaving plain layers whose weights
    still hold the shared values (for export, or a ``state_dict`` an unclustered model loads).

    Example:
        >>> strip_clustering(model)  # number of layers stripped
    """
    count = 0
    for _, module in list(clustered_modules(model)):
        snap_module(module)
        for key in _sharing_keys(module):
            del module._forward_pre_hooks[key]
        del module._buffers[CODEBOOK], module._buffers[INDICES]
        module.__dict__.pop(KEEP_ZERO, None)
        count += 1
    return count


class ClusterPreserving:
    """Training hook for cluster-preserving fine-tuning with any optimiser.

    ``after_backward`` replaces every clustered weight's gradient by its cluster's mean
    gradient, so weights that share a value receive identical updates (momentum, Adam and
    weight decay included) and stay shared; ``after_step`` re-snaps as a guard.

    ``reduction="sum"`` gives every member the cluster's summed gradient instead: the gradient of the
    loss with respect to the shared value itself (Deep Compression's centroid update), so a centroid
    moves as one parameter would, not ``1/size`` as fast. It needs a learning rate about ``1/size``
    smaller: at the weights' lr 0.01 the narrow VGG (16 clusters per layer) fell to 12.3 % in 12 batches
    (benchmarks/RESULTS.md, E5). ``reduction="sqrt"`` sits between the two: the summed gradient over
    ``sqrt(members)`` (the mean times ``sqrt(members)``), a per-centroid learning rate scaled by
    ``1/sqrt(members)``, so a big cluster moves faster than under the mean without the sum's blow-up.

    Example:
        >>> fit(model, loader, hooks=[ClusterPreserving()], config=TrainConfig(optimizer="adam"))
    """

    REDUCTIONS = ("mean", "sqrt", "sum")

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in self.REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} must be one of {', '.join(self.REDUCTIONS)}")
        self.reduction = reduction

    def after_backward(self, model: nn.Module) -> None:
        with torch.no_grad():
            for _, module in clustered_modules(model):
                grad = module.weight.grad
                if grad is None:
                    continue
                idx = getattr(module, INDICES).long().flatten()
                k = getattr(module, CODEBOOK).numel()
                sums = torch.zeros(k, dtype=torch.float64, device=grad.device).index_add_(
                    0, idx, grad.flatten().double()
                )
                counts = torch.bincount(idx, minlength=k).clamp_min(1).double()
                means = (
                    sums
                    / {"sum": torch.ones_like(counts), "sqrt": counts.sqrt(), "mean": counts}[self.reduction]
                )
                if getattr(module, KEEP_ZERO, False):  # the zero centroid (pruned weights) stays zero
                    means = torch.where(getattr(module, CODEBOOK) == 0, torch.zeros_like(means), means)
                grad.copy_(means[idx].view_as(grad).to(grad.dtype))

    def after_step(self, model: nn.Module) -> None:
        snap_clusters(model)
