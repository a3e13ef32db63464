"""snntorch's Leaky neuron in miniature, for tests of forwards that store state on their modules."""

from __future__ import annotations

import torch
from torch import nn


class Leaky(nn.Module):
    """snntorch.Leaky's shape: an empty ``mem`` buffer at first, replaced by every call (and when the input's shape
    changes); ``reset_mem`` as snntorch's ``init_leaky``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mem", torch.zeros(0), persistent=False)

    def reset_mem(self) -> torch.Tensor:
        self.mem = torch.zeros_like(self.mem)
        return self.mem

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.mem = mem
        if not self.mem.shape == x.shape:  # noqa: SIM201 - snntorch writes it so
            self.mem = torch.zeros_like(x)
        self.mem = 0.9 * self.mem + x
        spk = (self.mem > 1.0).float()
        self.mem = self.mem - spk
        return spk, self.mem
