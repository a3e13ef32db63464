"""A forward under a ``functools.wraps`` decorator ``wrapper(*args, **kwargs)`` with more parameters than the
wrapper has local names (transformers' ``deprecate_kwarg`` / ``can_return_tuple`` over Mamba-2's and Jamba's
``forward``): torch.fx fails with "code: co_varnames is too small". The refusal names the forward and the decorator
and says what to do; with example inputs the forward under the decorator is traced (and checked) instead."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.pruning.graph_tracing import trace_model
from netcompress.quantization.tracing import trace_for_quantization


def renamed(f):  # noqa: ANN001, ANN201
    @functools.wraps(f)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return f(*args, **kwargs)

    return wrapper


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    @renamed
    def forward(self, x, mask=None, cache=None, labels=None, use_cache=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        return self.body(x)


def test_the_refusal_names_the_forward_the_decorator_and_the_remedy() -> None:
    for trace in (trace_model, trace_for_quantization):
        with pytest.raises(UnsupportedModelError) as info:
            trace(Wrapped())
        message = str(info.value)
        assert "Wrapped.forward is wrapped by the decorator" in message
        assert f"{__name__}.renamed.<locals>.wrapper" in message and "pass example_inputs" in message
        assert "'body'" in message and "co_varnames" not in message


def test_with_example_inputs_the_forward_under_the_decorator_is_traced() -> None:
    torch.manual_seed(0)
    model, x = Wrapped().eval(), torch.randn(2, 4)
    gm = trace_model(model, x)
    assert torch.equal(gm(x), model(x))
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["body.0", "body.1", "body.2"]
