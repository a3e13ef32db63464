"""Zoo round 4 (session 12): nc.save / nc.load of recurrent layers and of dict subclasses.

- Every model holding an nn.LSTM / GRU / RNN was refused ("cannot save ..._flat_weight_refs[0]: <weakref>"):
  the weak references to its own parameters are now left out and rebuilt on load.
- A dict subclass (diffusers' ``FrozenDict`` config, read by attribute in ``forward``) was written as a plain
  ``OrderedDict``: the loaded model crashed in its forward. It is rebuilt as its class, items and attributes.
- A rebuilt model that fails on the example is a named ConfigError (nothing written), not a raw exception.
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import ConfigError


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(12, 5, batch_first=False)
        self.rnn = nn.RNN(5, 3, batch_first=True)
        self.proj = nn.LSTM(3, 4, proj_size=2, batch_first=True)

    def forward(self, x):
        y = self.lstm(x)[0]
        y = self.gru(y.transpose(0, 1))[0].transpose(0, 1)
        return self.proj(self.rnn(y)[0])[0]


def test_recurrent_layers_save_and_load(tmp_path):
    torch.manual_seed(0)
    model, x = Recurrent().eval(), torch.randn(2, 7, 4)
    saved = nc.save(model, tmp_path / "r.nc", example_inputs=x)
    back = nc.load(tmp_path / "r.nc", allow_modules=saved["allow_modules"])
    assert torch.equal(back(x), model(x))
    # the flat weights are the loaded module's own parameters (training the loaded model moves them)
    assert back.lstm._flat_weights[0] is back.lstm.weight_ih_l0
    with torch.no_grad():
        back.lstm.weight_ih_l0.zero_()
    assert not torch.equal(back(x), model(x))


class FrozenConfig(collections.OrderedDict):
    """As diffusers' FrozenDict: items also readable as attributes, no item assignment once built."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            setattr(self, key, value)
        self.__frozen = True

    def __setitem__(self, name, value):
        if getattr(self, "_FrozenConfig__frozen", False):
            raise RuntimeError("frozen")
        super().__setitem__(name, value)


class ReadsConfig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = FrozenConfig(scale=3.0, shift=1.0)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) * self.config.scale + self.config["shift"]


def test_a_dict_subclass_is_rebuilt_as_its_class(tmp_path):
    model, x = ReadsConfig().eval(), torch.randn(3, 4)
    saved = nc.save(model, tmp_path / "c.nc", example_inputs=x)
    back = nc.load(tmp_path / "c.nc", allow_modules=saved["allow_modules"])
    assert type(back.config) is FrozenConfig
    assert dict(back.config) == {"scale": 3.0, "shift": 1.0} and back.config.scale == 3.0
    assert torch.equal(back(x), model(x))
    with pytest.raises(RuntimeError, match="frozen"):  # still frozen
        back.config["scale"] = 1.0


class DefaultTable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.table = collections.defaultdict(lambda: 2.0)  # written as a plain dict: the default is lost

    def forward(self, x):
        return self.fc(x) * self.table["gain"]


def test_a_rebuilt_model_failing_on_the_example_is_named(tmp_path):
    model = DefaultTable().eval()
    with pytest.raises(ConfigError, match=r"rebuilt from its description fails on the example \(KeyError"):
        nc.save(model, tmp_path / "d.nc", example_inputs=torch.randn(2, 4))
    assert not (tmp_path / "d.nc").exists()


class Samples(nn.Module):
    """Draws in forward, as ViLT samples image patches with torch.multinomial even in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        keep = torch.multinomial(torch.ones(x.shape[1]), x.shape[1] - 1)
        return self.fc(x[:, keep.sort().values].sum(1, keepdim=True).expand(-1, 4))


def test_a_forward_that_samples_is_compared_under_one_seed(tmp_path):
    model, x = Samples().eval(), torch.randn(3, 6)
    state = torch.random.get_rng_state()
    saved = nc.save(model, tmp_path / "s.nc", example_inputs=x)  # refused before: "computes other outputs"
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    back = nc.load(tmp_path / "s.nc", allow_modules=saved["allow_modules"])
    torch.manual_seed(3)
    a = model(x)
    torch.manual_seed(3)
    assert torch.equal(back(x), a)
