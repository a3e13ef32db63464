"""The small classifiers attached at early exits: global average pool + Linear (or a small MLP).

Example::

    head = HEADS.get("pool_linear")(in_channels=32, num_classes=10)
    head(torch.randn(4, 32, 8, 8)).shape          # torch.Size([4, 10])
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


# name -> head class built with (in_channels=, num_classes=)
HEADS: Registry[type[nn.Module]] = Registry("early-exit head")
HEADS.register("pool_linear", PoolLinearHead)
HEADS.register("pool_mlp", PoolMLPHead)
