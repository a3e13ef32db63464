"""A custom autograd op kept as a module attribute (pytorchcv's shake-shake / shake-drop ResNets:
``self.shake_shake = ShakeShake.apply``): ``nc.save`` refused with "cannot save an object of class method from
builtins", which named neither the attribute nor the op. ``Function.apply`` is written as its class (looked up on
load as every class is, so the class's module must be allowed) and comes back as the same op."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import CheckpointError, ConfigError


class ScaledIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        return x * alpha

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class ShakeBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.shake = ScaledIdentity.apply

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shake(self.a(x), 0.25) + self.b(x)


class Holder:
    @classmethod
    def make(cls) -> int:
        return 1


def test_autograd_apply_round_trips(tmp_path):
    torch.manual_seed(0)
    model, x = nn.Sequential(ShakeBlock(), nn.Linear(4, 2)).eval(), torch.randn(3, 4)
    nc.save(model, tmp_path / "m.nc", example_inputs=x)
    back = nc.load(tmp_path / "m.nc", allow_modules=["tests"])
    assert back[0].shake == ScaledIdentity.apply
    assert torch.equal(back(x), model(x))


def test_autograd_apply_class_must_be_allowed(tmp_path):
    model = nn.Sequential(ShakeBlock())
    nc.save(model, tmp_path / "m.nc")
    with pytest.raises(CheckpointError, match="ShakeBlock|ScaledIdentity"):
        nc.load(tmp_path / "m.nc")


def test_other_class_bound_method_is_refused_by_name(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2))
    model[0].maker = Holder.make
    with pytest.raises(ConfigError, match=r"\['0'\]\.maker: Holder\.make is a method bound to a class"):
        nc.save(model, tmp_path / "m.nc")
