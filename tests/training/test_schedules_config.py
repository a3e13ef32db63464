"""Schedules give the expected rates; every optimiser and schedule is registered; bad configs name the field."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.training import (
    OPTIMIZER_BUILDERS,
    OPTIMIZERS,
    SCHEDULE_FNS,
    SCHEDULES,
    History,
    LRSchedule,
    Runtime,
    TrainConfig,
    build_optimizer,
    lr_at,
    seed_everything,
)


def test_registries_match_the_config_choices():
    assert OPTIMIZER_BUILDERS.names() == sorted(OPTIMIZERS)
    assert SCHEDULE_FNS.names() == sorted(SCHEDULES)


@pytest.mark.parametrize(
    ("name", "cls"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_each_optimizer_builds_with_config_values(name, cls):
    opt = build_optimizer(
        list(nn.Linear(2, 2).parameters()), TrainConfig(optimizer=name, lr=0.01, weight_decay=0.1)
    )
    assert type(opt) is cls
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 0.1


def test_cosine_values():
    cfg = TrainConfig(lr=0.1, epochs=4, schedule="cosine")
    assert lr_at(cfg, step=0, steps_per_epoch=10) == 0.1
    assert lr_at(cfg, step=20, steps_per_epoch=10) == pytest.approx(0.05, abs=1e-15)
    assert lr_at(cfg, step=30, steps_per_epoch=10) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.75)))
    assert lr_at(cfg, step=39, steps_per_epoch=10) == pytest.approx(0.05 * (1 + math.cos(math.pi * 39 / 40)))


def test_step_values_change_per_epoch_only():
    cfg = TrainConfig(lr=1.0, epochs=9, schedule="step", step_size=3, gamma=0.5)
    got = [lr_at(cfg, step=s, steps_per_epoch=4) for s in (0, 11, 12, 23, 24, 35)]
    assert got == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_warmup_is_linear_then_the_schedule_starts():
    cfg = TrainConfig(lr=0.2, epochs=3, schedule="cosine", warmup_epochs=1)
    warm = [lr_at(cfg, step=s, steps_per_epoch=4) for s in range(4)]
    assert warm == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert lr_at(cfg, step=4, steps_per_epoch=4) == 0.2  # cosine over the remaining 8 batches
    assert lr_at(cfg, step=8, steps_per_epoch=4) == pytest.approx(0.1)
    const = TrainConfig(lr=0.2, epochs=3, schedule="constant", warmup_epochs=2)
    assert lr_at(const, step=0, steps_per_epoch=2) == pytest.approx(0.05)
    assert lr_at(const, step=5, steps_per_epoch=2) == 0.2


def test_onecycle_matches_torch_onecyclelr():
    cfg = TrainConfig(lr=0.3, epochs=3, schedule="onecycle")
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.3)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=21, cycle_momentum=False)
    diffs = []
    for step in range(21):
        diffs.append(abs(lr_at(cfg, step=step, steps_per_epoch=7) - opt.param_groups[0]["lr"]))
        opt.step()
        ref.step()
    assert max(diffs) < 1e-12
    assert lr_at(cfg, step=0, steps_per_epoch=7) == pytest.approx(0.3 / 25)


def test_lr_schedule_scales_each_group_and_keeps_its_position():
    w1, w2 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w1], "lr": 0.1}, {"params": [w2], "lr": 0.01}])
    sched = LRSchedule(opt, TrainConfig(epochs=2, schedule="cosine"), steps_per_epoch=5)
    for _ in range(5):
        sched.apply()
        sched.advance()
    sched.apply()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.005])
    assert sched.state_dict() == {"step": 5}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"lr": -1.0}, "lr"),
        ({"epochs": -2}, "epochs"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"momentum": 1.5}, "momentum"),
        ({"gamma": 2.0}, "gamma"),
        ({"step_size": 0}, "step_size"),
        ({"warmup_epochs": 5, "epochs": 3}, "warmup_epochs"),
        ({"label_smoothing": 1.5}, "label_smoothing"),
        ({"grad_clip_norm": 0.0}, "grad_clip_norm"),
        ({"device": "gpu0"}, "device"),
        ({"schedule": "onecycle", "warmup_epochs": 1}, "warmup_epochs"),
        ({"optimizer": "adam", "nesterov": True}, "nesterov"),
    ],
)
def test_invalid_config_is_a_config_error_naming_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**changes)
    with pytest.raises(ConfigError, match=field):
        TrainConfig.from_dict(changes, where="step 1")


def test_history_json_round_trip_and_best(tmp_path):
    h = History(
        rows=[{"epoch": 0, "val_acc": 0.5}, {"epoch": 1, "val_acc": 0.75}, {"epoch": 2, "val_acc": 0.75}],
        best_epoch=1,
    )
    path = h.to_json(tmp_path / "h.json")
    back = History.from_json(path)
    assert back == h and back.best()["epoch"] == 1 and back.last["epoch"] == 2
    assert back.best(key="val_acc", mode="min")["epoch"] == 0
    assert History().best() is None and History().last is None
    with pytest.raises(CheckpointError, match="not found"):
        History.from_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CheckpointError, match="bad.json"):
        History.from_json(tmp_path / "bad.json")


def test_seed_everything_repeats_python_numpy_and_torch():
    import random

    import numpy as np

    seed_everything(3)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_runtime_is_single_process(monkeypatch):
    rt = Runtime.from_env(device="cpu")
    model = nn.Linear(1, 1)
    assert rt.is_main and rt.wrap_model(model) is model and rt.all_reduce_sum(torch.ones(1)).item() == 1.0
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="WORLD_SIZE=2"):
        Runtime.from_env()
