"""Early exits traced a model with ``fx.GraphModule(tracer.root, tracer.trace(model), ...)``: ``tracer.root`` is read
before ``trace`` sets it, so plain fx always failed with "'_ExitTracer' object has no attribute 'root'" and the value
tracer ran instead; where that failed too (transformers' Mamba-2, Jamba, FNet), the refusal named this internal
error instead of the model's. Plain fx now runs first and a model it cannot trace is refused with its own error.
(The value tracer is made to fail here, so each test sees what plain fx did.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress.dynamic.exit_points as exit_points
from netcompress.core.errors import UnsupportedModelError


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Branchy(Plain):
    def forward(self, x):
        y = self.a(x)
        return self.b(y if y.sum() > 0 else -y)  # control flow on a value: plain fx cannot trace it


@pytest.fixture
def no_value_tracing(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("value tracing disabled by the test")

    monkeypatch.setattr(exit_points, "trace_with_values", fail)


def test_plain_fx_traces_the_model(no_value_tracing):
    gm = exit_points._trace(Plain(), ["a"], torch.randn(2, 4))
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["a", "b"]


def test_an_untraceable_model_is_refused_with_its_own_error(no_value_tracing):
    with pytest.raises(UnsupportedModelError) as err:
        exit_points._trace(Branchy(), ["a"], torch.randn(2, 4))
    assert "has no attribute 'root'" not in str(err.value)
    assert "cannot trace Branchy with torch.fx (TraceError" in str(err.value)
