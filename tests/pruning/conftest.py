"""Models shared by the pruning tests (imported as ``from .conftest import ...``)."""

from __future__ import annotations

import torch
from torch import nn


class TwoBranch(nn.Module):
    """Two independent 16-channel branches (groups "a" and "b": no layer couples them), then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.a_bn, self.a2 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1)
        self.b, self.b_bn, self.b2 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ya = self.a2(torch.relu(self.a_bn(self.a(x))))
        yb = self.b2(torch.relu(self.b_bn(self.b(x))))
        return self.fc(torch.flatten(self.pool(torch.cat([ya, yb], 1)), 1))
