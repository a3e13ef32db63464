"""nc.save of a module whose own bound method is a hook (Mamba: ``self._register_load_state_dict_pre_hook(
self.load_hook)``) was refused ("an object of class method from builtins"); the method is now written by
name and bound again to the rebuilt module. A method that is not its module's class's own is refused."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import ConfigError


class Renamed(nn.Module):
    """Loads old checkpoints whose key was ``old.weight`` (as Mamba renames ``embedding.``)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self._register_load_state_dict_pre_hook(self.load_hook)

    def load_hook(self, state_dict, prefix, *args):
        for key in [k for k in state_dict if k.startswith(prefix + "old.")]:
            state_dict[key.replace("old.", "fc.")] = state_dict.pop(key)

    def forward(self, x):
        return self.fc(x)


def test_a_bound_method_hook_is_rebound_to_the_loaded_module(tmp_path):
    torch.manual_seed(0)
    model, x = Renamed().eval(), torch.randn(4, 3)
    saved = nc.save(model, tmp_path / "m.nc", example_inputs=x)
    back = nc.load(tmp_path / "m.nc", allow_modules=saved["allow_modules"])
    assert torch.equal(back(x), model(x))
    (hook,) = back._load_state_dict_pre_hooks.values()
    assert getattr(hook, "hook", hook).__self__ is back  # bound to the rebuilt module, not a copy
    old = {"old.weight": torch.ones(2, 3), "old.bias": torch.zeros(2)}
    back.load_state_dict(old)  # the hook runs and renames the keys
    assert torch.equal(back.fc.weight, torch.ones(2, 3))


def test_a_method_foreign_to_its_module_is_refused(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))

    def sneaky(self, *args):
        return None

    model._register_load_state_dict_pre_hook(types.MethodType(sneaky, model))
    with pytest.raises(ConfigError, match="method 'sneaky' is not one of its module's class"):
        nc.save(model, tmp_path / "m.nc")
