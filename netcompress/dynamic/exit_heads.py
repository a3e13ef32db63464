"""The small classifiers attached at early exits: global average pool + Linear (or a small MLP),
or a grid pool + Linear that keeps where things are (``pool_grid_linear``; ``pool_grid2_linear`` pools to
2 x 2; ``pool_grid_mix_linear``: SDN's head; ``pool_conv_grid_linear``: a pooled 1x1 conv before the grid;
``pool_grid_conv_linear``: the 1x1 conv on the grid itself, cheaper; ``pool_grid_conv4_linear``: the same, 4x wide).

Every head here is ``classify(features(x))``: ``features`` is the pooled, flattened tensor its first
Linear reads (what a feature exit gate, :mod:`netcompress.dynamic.feature_gates`, also reads).

Example::

    head = HEADS.get("pool_linear")(in_channels=32, num_classes=10)
    head(torch.randn(4, 32, 8, 8)).shape          # torch.Size([4, 10])
    HEADS.get("pool_grid_linear")(in_channels=16, num_classes=10)(torch.randn(4, 16, 32, 32)).shape
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.registry import Registry


def _pool(x: torch.Tensor) -> torch.Tensor:
    # mean over every axis after the channels (a (N, C) input passes unchanged)
    return x.flatten(2).mean(dim=2) if x.dim() > 2 else x


# from this many (N * C * H) rows on, pooling by two matrix products beats avg_pool2d on one CPU thread
# (batch 64, session 14: (64, 16, 32, 32) -> 8 x 8 1.8 vs 2.2 ms, (64, 32, 16, 16) -> 8 x 8 1.3 vs 3.0 ms,
# (64, 32, 8, 8) -> 4 x 4 0.15 vs 1.0 ms); at batch 1 (512 rows) avg_pool2d is faster
MATMUL_POOL_ROWS = 4096


def _pool_matrix(size: int, grid: int, like: torch.Tensor) -> torch.Tensor:
    """(size, grid): column g averages the ``size // grid`` inputs of cell g."""
    k = size // grid
    return torch.eye(grid, dtype=like.dtype, device=like.device).repeat_interleave(k, dim=0) / k


def _matmul_average(x: torch.Tensor, grid: int) -> torch.Tensor:
    n, c, h, w = x.shape
    along_w = (x.reshape(n * c * h, w) @ _pool_matrix(w, grid, x)).view(n, c, h, grid)
    along_h = along_w.transpose(2, 3).reshape(n * c * grid, h) @ _pool_matrix(h, grid, x)
    return along_h.view(n, c, grid, grid).transpose(2, 3)


def grid_average(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Average pooling of a (N, C, H, W) map to ``grid`` x ``grid``, the same numbers as
    ``adaptive_avg_pool2d`` (up to float rounding), as fast as it goes on CPU: paid by every sample an exit
    sees. Where the grid divides the map: the map itself when it already is ``grid`` x ``grid``
    (``avg_pool2d`` with a 1 x 1 kernel took 5.4 ms at (64, 64, 8, 8), one thread), two matrix products
    from :data:`MATMUL_POOL_ROWS` rows on, else ``avg_pool2d`` with an exact kernel (1.4-1.8x faster than
    ``adaptive_avg_pool2d`` at batch 64); elsewhere ``adaptive_avg_pool2d``."""
    if torch.jit.is_tracing():  # an ONNX export: the map's size would be traced as a constant
        return F.adaptive_avg_pool2d(x, grid)
    height, width = int(x.shape[-2]), int(x.shape[-1])
    if height % grid or width % grid:
        return F.adaptive_avg_pool2d(x, grid)
    if height == grid and width == grid:
        return x
    if x.dim() == 4 and x.shape[0] * x.shape[1] * height >= MATMUL_POOL_ROWS:
        return _matmul_average(x, grid)
    return F.avg_pool2d(x, (height // grid, width // grid))


class PoolLinearHead(nn.Module):
    """Global average pool over every spatial/time axis, then one Linear to the classes."""

    def __init__(self, *, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return _pool(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class PoolMLPHead(nn.Module):
    """Global average pool, Linear-ReLU to ``hidden`` units, Linear to the classes (a stronger head)."""

    def __init__(self, *, in_channels: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_channels, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return _pool(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.hidden(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class PoolGridLinearHead(nn.Module):
    """Average pooling to a ``grid`` x ``grid`` map, then one Linear to the classes.

    After the head of Shallow-Deep Networks (Kaya et al., 2019): a global pool throws away where
    the features are, which an exit early in a CNN needs; a 4 x 4 grid keeps it for ``C * 16``
    weights per class and no convolution. With ``mix`` the pooling is SDN's learned mix
    ``sigmoid(a) * max + (1 - sigmoid(a)) * avg`` (``a`` starts at 0); it is off by default
    because max pooling is slow on CPU (12 ms against 3 ms for a (64, 16, 32, 32) map on one
    thread, about half a ResNet-20 conv), which an exit pays for every sample it sees. A (N, C, L)
    input pools to ``grid ** 2`` steps (the same Linear size), a (N, C) input is repeated to that
    size. The grid must divide the spatial size for an ONNX export.

    Example:
        >>> PoolGridLinearHead(in_channels=16, num_classes=10)(torch.randn(2, 16, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, *, in_channels: int, num_classes: int, grid: int = 4, mix: bool = False) -> None:
        super().__init__()
        self.grid = int(grid)
        self.mix = nn.Parameter(torch.zeros(())) if mix else None
        self.fc = nn.Linear(in_channels * self.grid**2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled map, flattened: ``(N, C * grid ** 2)`` (what ``fc`` reads)."""
        if x.dim() != 4:
            x = x if x.dim() == 3 else x.unsqueeze(-1)
            pool = (F.adaptive_max_pool1d, F.adaptive_avg_pool1d)
            size = self.grid**2
        else:
            pool, size = (F.adaptive_max_pool2d, F.adaptive_avg_pool2d), self.grid
        pooled = grid_average(x, size) if x.dim() == 4 else pool[1](x, size)
        if self.mix is not None:
            weight = torch.sigmoid(self.mix)
            pooled = weight * pool[0](x, size) + (1 - weight) * pooled
        return pooled.flatten(1)


class PoolConvGridLinearHead(nn.Module):
    """Average pooling to ``2 * grid``, a 1x1 convolution to ``width * C`` channels with BatchNorm and ReLU,
    average pooling to ``grid`` x ``grid``, one Linear: a non-linear head for about ``(2 grid)^2 * width * C^2``
    more MACs than :class:`PoolGridLinearHead` (16 K at a 16-channel exit, grid 4; the 1x1 convolution
    BEFORE pooling would cost 64x that at 32 x 32). 2-D inputs only.

    Example:
        >>> PoolConvGridLinearHead(in_channels=16, num_classes=10)(torch.randn(2, 16, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, *, in_channels: int, num_classes: int, grid: int = 4, width: int = 2) -> None:
        super().__init__()
        self.grid = int(grid)
        hidden = in_channels * int(width)
        self.conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.fc = nn.Linear(hidden * self.grid**2, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        pooled = grid_average(x, 2 * self.grid)
        return grid_average(F.relu(self.bn(self.conv(pooled))), self.grid).flatten(1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class PoolGridConvLinearHead(PoolConvGridLinearHead):
    """Average pooling to ``grid`` x ``grid`` FIRST, then a 1x1 convolution to ``width * C`` channels with
    BatchNorm and ReLU, one Linear: :class:`PoolConvGridLinearHead`'s non-linearity for a quarter of its
    convolution (``grid^2`` positions instead of ``(2 grid)^2``) and without its second pooling, which a
    cheap exit wants (session 15, batch 64, one thread: the second pooling and the convolution at 8 x 8
    were half of that head's 3-6 ms). 2-D inputs only.

    Example:
        >>> PoolGridConvLinearHead(in_channels=16, num_classes=10)(torch.randn(2, 16, 32, 32)).shape
        torch.Size([2, 10])
    """

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(grid_average(x, self.grid)))).flatten(1)


# name -> head class built with (in_channels=, num_classes=)
HEADS: Registry[type[nn.Module]] = Registry("early-exit head")
HEADS.register("pool_linear", PoolLinearHead)
HEADS.register("pool_mlp", PoolMLPHead)
HEADS.register("pool_grid_linear", PoolGridLinearHead)
HEADS.register("pool_grid_mix_linear", functools.partial(PoolGridLinearHead, mix=True))
HEADS.register("pool_grid2_linear", functools.partial(PoolGridLinearHead, grid=2))
HEADS.register("pool_conv_grid_linear", PoolConvGridLinearHead)
HEADS.register("pool_grid_conv_linear", PoolGridConvLinearHead)
HEADS.register("pool_grid_conv4_linear", functools.partial(PoolGridConvLinearHead, width=4))
