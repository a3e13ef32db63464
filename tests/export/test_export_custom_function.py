"""A custom ``torch.autograd.Function`` the ONNX exporter's trace cannot follow (Reformer's ``_ReversibleFunction``,
which runs its layers under ``no_grad`` and takes the layer list as an argument): ``export_onnx`` fails with an
UnsupportedModelError naming the function; before, the exporter's bare ``RuntimeError: unordered_map::at`` came
through (zoo round 7: four CRASH cells of transformers' ReformerModelWithLMHead)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError


class Reversible(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layers):  # noqa: ANN001, ANN205
        with torch.no_grad():
            for layer in layers:
                x = layer(x)
        ctx.save_for_backward(x.detach())
        return x

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad, None


class ReversibleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(Reversible.apply(x, self.layers))


class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x * 2

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad * 2


def test_an_untraceable_custom_function_is_named(tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"custom torch.autograd.Function\(s\) \S*Reversible\b"):
        nc.export_onnx(ReversibleNet().eval(), tmp_path / "m.onnx", torch.randn(2, 4))
    assert torch.autograd.Function.apply.__func__.__name__ == "apply"  # the recording patch is undone
    assert Scale.apply(torch.ones(1)).item() == 2.0


def test_a_traceable_custom_function_still_exports(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(Scale.apply(x))

    summary = nc.export_onnx(Net().eval(), tmp_path / "s.onnx", torch.randn(2, 4), check=True)
    assert summary["check"]["max_abs_diff"] < 1e-5
