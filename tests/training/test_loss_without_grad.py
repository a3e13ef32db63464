"""A training loss that carries no gradient (a forward or a distillation tap computed under ``no_grad``, as in
Reformer's reversible layers) stops fit with an UnsupportedModelError saying why; before,
``backward`` raised a bare ``RuntimeError: element 0 of tensors does not require grad`` (zoo round 7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError
from netcompress.training import TrainConfig


class NoGradBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fc(x)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(2)]


def test_a_forward_under_no_grad_is_named():
    model = NoGradBody()
    before = model.fc.weight.detach().clone()
    with pytest.raises(UnsupportedModelError, match=r"step 1/2 carries no gradient.*torch.no_grad"):
        nc.fit_(model, _batches(), config=TrainConfig(epochs=1, lr=0.1, progress=False))
    assert torch.equal(model.fc.weight, before)

