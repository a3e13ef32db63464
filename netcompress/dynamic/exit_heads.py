"""The small classifiers attached at early exits: global average pool + Linear (or a small MLP),
or a grid pool + Linear that keeps where things are (``pool_grid_linear``, the SDN head).

Example::

    head = HEADS.get("pool_linear")(in_channels=32, num_classes=10)
    head(torch.randn(4, 32, 8, 8)).shape          # torch.Size([4, 10])
    HEADS.get("pool_grid_linear")(in_channels=16, num_classes=10)(torch.randn(4, 16, 32, 32)).shape
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.registry import Registry


def _pool(x: torch.Tensor) -> torch.Tensor:
    # mean over every axis after the channels (a (N, C) input passes unchanged)
    return x.flatten(2).mean(dim=2) if x.dim() > 2 else x


class PoolLinearHead(nn.Module):
    """Global average pool over every spatial/time axis, then one Linear to the classes."""

    def __init__(self, *, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_pool(x))


class PoolMLPHead(nn.Module):
    """Global average pool, Linear-ReLU to ``hidden`` units, Linear to the classes (a stronger head)."""

    def __init__(self, *, in_channels: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_channels, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.hidden(_pool(x))))


class PoolGridLinearHead(nn.Module):
    """Mixed max/average pooling to a ``grid`` x ``grid`` map, then one Linear to the classes.

    The head of Shallow-Deep Networks (Kaya et al., 2019): a global pool throws away where the
    features are, which an exit early in a CNN needs; a 4 x 4 grid keeps it for ``C * 16`` weights
    per class and no convolution. The mix ``sigmoid(a) * max + (1 - sigmoid(a)) * avg`` is learned
    (``a`` starts at 0). A (N, C, L) input pools to ``grid ** 2`` steps (the same Linear size), a
    (N, C) input is repeated to that size. The grid must divide the spatial size for an ONNX export.

    Example:
        >>> PoolGridLinearHead(in_channels=16, num_classes=10)(torch.randn(2, 16, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, *, in_channels: int, num_classes: int, grid: int = 4) -> None:
        super().__init__()
        self.grid = int(grid)
        self.mix = nn.Parameter(torch.zeros(()))
        self.fc = nn.Linear(in_channels * self.grid**2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            peak, mean = F.adaptive_max_pool2d(x, self.grid), F.adaptive_avg_pool2d(x, self.grid)
        else:
            x = x if x.dim() == 3 else x.unsqueeze(-1)
            peak = F.adaptive_max_pool1d(x, self.grid**2)
            mean = F.adaptive_avg_pool1d(x, self.grid**2)
        weight = torch.sigmoid(self.mix)
        return self.fc((weight * peak + (1 - weight) * mean).flatten(1))


# name -> head class built with (in_channels=, num_classes=)
HEADS: Registry[type[nn.Module]] = Registry("early-exit head")
HEADS.register("pool_linear", PoolLinearHead)
HEADS.register("pool_mlp", PoolMLPHead)
HEADS.register("pool_grid_linear", PoolGridLinearHead)
