"""The contract for distill/soft_targets: the verb and ``apply`` give the same student; the
``_`` verb trains in place; ``teacher: {step: N}`` loads the model a run saved after step N."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import netcompress as nc
from netcompress.core.io import atomic_torch_save
from netcompress.core.methods import MethodData, apply, method_for
from netcompress.distillation import SoftTargetsConfig, distill, distill_
from netcompress.training import TrainConfig

FIELDS = {"epochs": 2, "lr": 0.1, "temperature": 2.0, "alpha": 0.7, "seed": 1, "progress": False}


def _loader(seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(48, 8, generator=gen), torch.randint(0, 3, (48,), generator=gen)
    return DataLoader(
        TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(2)
    )


def _net(seed: int, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_distill_verb_and_method_give_the_same_student():
    teacher = _net(7, hidden=32)
    by_verb, by_method = _net(0), _net(0)
    summary = distill_(by_verb, teacher, _loader(), val_loader=_loader(5), **FIELDS)
    assert method_for(SoftTargetsConfig).key == "distill/soft_targets"
    result = apply(
        by_method,
        SoftTargetsConfig.from_dict(FIELDS, where="test"),
        MethodData(train_loader=_loader(), val_loader=_loader(5), extras={"teacher": teacher}),
    )
    assert _same(by_verb, by_method)
    assert summary == result.summary


def test_distill_underscore_trains_in_place_and_the_alias_returns_the_student():
    teacher, student = _net(7, hidden=32), _net(0)
    before = copy.deepcopy(student)
    summary = nc.distill_(student, teacher, _loader(), **FIELDS)
    assert isinstance(summary, dict) and summary["epochs"] == 2
    assert not _same(student, before)
    again = _net(0)
    out = nc.distill(again, teacher, _loader(), **FIELDS)
    assert out is again and _same(again, student)


def test_distill_takes_a_train_config_with_fields_on_top():
    teacher = _net(7, hidden=32)
    a, b = _net(0), _net(0)
    train = TrainConfig(epochs=2, lr=0.1, seed=1, progress=False)
    distill(a, teacher, _loader(), config=train, temperature=2.0, alpha=0.7)
    distill(b, teacher, _loader(), **FIELDS)
    assert _same(a, b)


def test_teacher_from_an_earlier_step_is_the_model_saved_there(tmp_path):
    teacher = _net(7, hidden=32)
    path = atomic_torch_save(teacher, tmp_path / "step1" / "model.pt", sign=True)
    by_step, by_module = _net(0), _net(0)
    apply(
        by_step,
        SoftTargetsConfig.from_dict({**FIELDS, "teacher": {"step": 1}}, where="test"),
        MethodData(train_loader=_loader(), num_classes=3, extras={"step_models": {1: path}}),
    )
    apply(
        by_module,
        SoftTargetsConfig.from_dict(FIELDS, where="test"),
        MethodData(train_loader=_loader(), extras={"teacher": teacher}),
    )
    assert _same(by_step, by_module)
