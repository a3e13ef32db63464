"""One-dimensional k-means for weight sharing (Han et al., Deep Compression, 2016).

Weights are scalars, so k-means is solved on the sorted line: with sorted centroids the
nearest one is found by ``torch.bucketize`` on the midpoints (O(n log k), no n x k distance
matrix), and each update is a per-cluster mean by ``index_add_``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from netcompress.core.config import check_choice, check_range
from netcompress.core.registry import Registry

InitFn = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
KMEANS_INITS: Registry[InitFn] = Registry("k-means initialisation")

_KMEANSPP_SAMPLE = 100_000  # k-means++ seeding looks at a random subset of large layers


@KMEANS_INITS.register("linear")
def _linear_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Evenly spaced between min and max: keeps the rare large weights, which matter most."""
    return torch.linspace(float(x.min()), float(x.max()), k, dtype=x.dtype)


@KMEANS_INITS.register("kmeans++")
def _kmeanspp_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    if x.numel() > _KMEANSPP_SAMPLE:
        x = x[torch.randperm(x.numel(), generator=gen)[:_KMEANSPP_SAMPLE]]
    centroids = [x[torch.randint(x.numel(), (1,), generator=gen)].item()]
    dist = (x - centroids[0]) ** 2
    for _ in range(1, k):
        if float(dist.sum()) == 0:
            break
        centroids.append(x[torch.multinomial(dist, 1, generator=gen)].item())
        dist = torch.minimum(dist, (x - centroids[-1]) ** 2)
    return torch.tensor(sorted(centroids), dtype=x.dtype)


@KMEANS_INITS.register("density")
def _density_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Evenly spaced quantiles of the values (Deep Compression's density-based initialisation):
    more centroids where weights are dense. ``x`` arrives sorted."""
    if k == 1:
        return x[x.numel() // 2 : x.numel() // 2 + 1].clone()
    positions = torch.linspace(0, x.numel() - 1, k).round().long()
    return x[positions].unique()


def nearest_centroid(values: torch.Tensor, sorted_centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of ``sorted_centroids`` (ascending) for every value.

    Example:
        >>> nearest_centroid(torch.tensor([0.1, 0.9, 2.0]), torch.tensor([0.0, 1.0]))
        tensor([0, 1, 1])
    """
    midpoints = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2
    return torch.bucketize(values, midpoints.to(values.dtype))


def _bucket_stats(xs: torch.Tensor, prefix: torch.Tensor, centroids: torch.Tensor):
    """Per-cluster (sum, count) of the sorted values ``xs`` for the nearest-centroid buckets,
    from prefix sums: O(k log n) per k-means iteration instead of O(n)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    ends = torch.searchsorted(xs, midpoints, right=True)  # same tie rule as torch.bucketize
    bounds = torch.cat([ends.new_zeros(1), ends, ends.new_full((1,), xs.numel())])
    return prefix[bounds[1:]] - prefix[bounds[:-1]], bounds.diff()


def _reseed_empty(xs: torch.Tensor, centroids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Move each empty cluster onto the value worst fitted by its current centroid."""
    err = (xs - torch.repeat_interleave(centroids, counts)) ** 2
    for j in torch.nonzero(counts == 0).flatten().tolist():
        worst = xs[int(err.argmax())]
        centroids[j] = worst
        err = torch.where(xs == worst, torch.zeros_like(err), err)  # the next one looks elsewhere
    return centroids


def kmeans_1d(
    values: torch.Tensor,
    *,
    clusters: int,
    init: str = "linear",
    seed: int = 0,
    iterations: int = 300,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster scalars into at most ``clusters`` groups; return ``(codebook, indices)``.

    ``codebook`` is ascending, each entry is the mean of its members, and every entry is used
    (an emptied cluster is re-seeded at the worst-fitted value; one still empty at the end is
    dropped), so it has ``min(clusters, distinct values)`` entries in practice. Lloyd
    iterations run on the sorted values with prefix sums, so they cost O(k log n) each.
    Computed in float64; the codebook comes back in ``values.dtype``, ``indices`` as int64.

    Example:
        >>> codebook, idx = kmeans_1d(torch.tensor([0.0, 0.1, 1.0, 1.1]), clusters=2)
        >>> codebook, idx
        (tensor([0.0500, 1.0500]), tensor([0, 0, 1, 1]))
    """
    check_range("clusters", clusters, 1)
    check_choice("init", init, KMEANS_INITS.names())
    x = values.detach().flatten().double()
    if x.numel() == 0:
        raise ValueError("kmeans_1d needs at least one value")
    xs = x.sort().values
    prefix = torch.cat([xs.new_zeros(1), xs.cumsum(0)])
    distinct = int((xs[1:] != xs[:-1]).sum()) + 1
    gen = torch.Generator().manual_seed(seed)
    centroids = KMEANS_INITS.get(init)(xs.cpu(), min(clusters, distinct), gen).to(x.device)
    for _ in range(iterations):
        sums, counts = _bucket_stats(xs, prefix, centroids)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if bool((counts == 0).any()):
            new = _reseed_empty(xs, new, counts)
        new = new.sort().values
        if torch.equal(new, centroids):
            break
        centroids = new
    sums, counts = _bucket_stats(xs, prefix, centroids)
    used = counts > 0
    codebook = sums[used] / counts[used]
    idx = nearest_centroid(x, centroids)
    remap = torch.cumsum(used.long(), 0) - 1
    return codebook.to(values.dtype), remap[idx]
