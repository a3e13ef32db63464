import dataclasses

import pytest
import torch
from torch import nn

from netcompress.core import (
    CheckpointError,
    Config,
    ConfigError,
    Registry,
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint,
    select_modules,
)


@dataclasses.dataclass
class _Cfg(Config):
    amount: float = 0.5
    method: str = "l1"


def test_config_round_trip_and_unknown_key_named():
    cfg = _Cfg.from_dict({"amount": 0.3})
    assert cfg.amount == 0.3 and _Cfg.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"'amout'.*step 2.*did you mean 'amount'"):
        _Cfg.from_dict({"amout": 0.3}, where="step 2")


def test_registry_unknown_name_lists_known():
    reg: Registry = Registry("model")
    reg.register("vgg", object())
    with pytest.raises(ConfigError, match=r"unknown model 'vgq'.*'vgg'"):
        reg.get("vgq")
    assert reg.names() == ["vgg"] and "vgg" in reg


def test_select_modules_by_name_and_regex():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    assert list(select_modules(model)) == ["0", "2", "4"]
    assert list(select_modules(model, include=["re:[02]"])) == ["0", "2"]
    assert list(select_modules(model, exclude=["4"])) == ["0", "2"]
    with pytest.raises(ConfigError, match="'9' matches no"):
        select_modules(model, include=["9"])


def test_atomic_writes_and_checked_loading(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "f.txt", "hello")
    assert path.read_text() == "hello" and list(path.parent.iterdir()) == [path]
    ckpt = atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(ckpt)["w"], torch.ones(2))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")


def test_every_public_verb_resolves():
    import netcompress as nc

    for name in nc.__all__:
        assert getattr(nc, name) is not None, name
