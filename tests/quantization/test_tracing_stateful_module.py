"""A module whose forward stores its state on itself (``self.mem = ...``, snntorch's spiking neurons): tracing it
for channel pruning, quantization or Wanda must leave the user's model as it was. Before the fix the traced
forward left an fx proxy in ``lif.mem``, and every later call on the model (the next verb, even plain
inference) failed with a TraceError (zoo round 7: 30 CRASH cells of three snntorch nets)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError
from tests.tiny_spiking import Leaky


class SpikingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.lif, self.fc2 = nn.Linear(6, 8), Leaky(), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem = x.new_zeros(x.shape[0], 8)
        total = 0
        for _ in range(3):
            spk, mem = self.lif(self.fc1(x), mem)
            total = total + self.fc2(spk) + mem.sum(1, keepdim=True)
        return total


def _check_untouched(model: SpikingNet, x: torch.Tensor, want: torch.Tensor, mem: torch.Tensor) -> None:
    assert type(model.lif.mem) is torch.Tensor and torch.equal(model.lif.mem, mem)
    with torch.no_grad():
        assert torch.equal(model(x), want)


def test_a_refused_channel_prune_leaves_the_state_attribute_as_it_was():
    torch.manual_seed(0)
    model, x = SpikingNet().eval(), torch.randn(4, 6) * 3
    with torch.no_grad():
        want, mem = model(x), model.lif.mem.clone()
    # refused (since session 16 the spike comparison is followed; ``mem.sum(1)`` keeps fc1's channels whole)
    with pytest.raises(UnsupportedModelError, match="no channel group of SpikingNet can be pruned"):
        nc.prune_channels(model, x, ratio=0.5)
    _check_untouched(model, x, want, mem)


def test_quantization_and_wanda_trace_a_stateful_module_and_leave_it_as_it_was():
    torch.manual_seed(0)
    model, x = SpikingNet().eval(), torch.randn(4, 6) * 3
    with torch.no_grad():
        want, mem = model(x), model.lif.mem.clone()
    q = nc.quantize(model, [(torch.randn(8, 6) * 3,)], bits=8)
    _check_untouched(model, x, want, mem)
    assert sum(type(m).__name__ == "QuantLinear" for m in q.modules()) == 2  # fc1, fc2
    assert torch.isfinite(q(x)).all()
    nc.prune_wanda_(model, [(torch.randn(8, 6) * 3,)], amount=0.5)
    assert float((model.fc1.weight == 0).float().mean()) == 0.5
    assert type(model.lif.mem) is torch.Tensor
