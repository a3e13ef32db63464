"""benchmarks/distillation.py: its bare reference KD loop matches netcompress.distill, cache keys."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netcompress.core import ConfigError

bench = importlib.import_module("benchmarks.distillation")  # on sys.path: see conftest.py


def _small_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 5),
    )


def _loader() -> DataLoader:
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(96, 3, 8, 8, generator=gen), torch.randint(0, 5, (96,), generator=gen))
    return DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_reference_loop_matches_netcompress_distill():
    teacher = _small_cnn(7).eval()
    settings = {"epochs": 2, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "seed": 0}
    student = _small_cnn(3)
    start = copy.deepcopy(student.state_dict())
    config = bench.train_config(bench.cp.PROTOCOLS["quick"], epochs=2, lr=0.05)
    ours, history = bench.distill_with_history(
        student, teacher, _loader(), config, temperature=4.0, alpha=0.9
    )
    ref = _small_cnn(3)
    rows = bench.reference_kd_fit(ref, teacher, _loader(), temperature=4.0, alpha=0.9, **settings)

    moved = max(float((ours.state_dict()[k].float() - v.float()).abs().max()) for k, v in start.items())
    assert moved > 1e-2  # training changed the weights, so equal weights below mean equal training
    gap = max(
        float((a.float() - b.float()).abs().max())
        for a, b in zip(ours.state_dict().values(), ref.state_dict().values())
    )
    assert gap < 1e-5
    for mine, theirs in zip(history, rows):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-5)
        assert mine["train_acc"] == pytest.approx(theirs["train_acc"], abs=1e-9)


def test_log_target_reference_loop_is_bitwise_equal_to_distill():
    teacher = _small_cnn(7).eval()
    config = bench.train_config(bench.cp.PROTOCOLS["quick"], epochs=1, lr=0.05)
    ours, _ = bench.distill_with_history(
        _small_cnn(3), teacher, _loader(), config, temperature=4.0, alpha=0.9
    )
    ref = _small_cnn(3)
    bench.reference_kd_fit(
        ref,
        teacher,
        _loader(),
        epochs=1,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        seed=0,
        temperature=4.0,
        alpha=0.9,
        kl_form="log_target",
    )
    assert bench.max_weight_diff(ours, ref) == 0.0
    with pytest.raises(ConfigError, match="kl_form"):
        bench.reference_kd_fit(
            ref,
            teacher,
            _loader(),
            epochs=1,
            lr=0.05,
            momentum=0.9,
            weight_decay=0.0,
            seed=0,
            temperature=4.0,
            alpha=0.9,
            kl_form="js",
        )


def test_reference_loop_differs_with_other_alpha():
    # the comparison above can fail: another alpha gives other weights after the same batches
    teacher = _small_cnn(7).eval()
    kwargs = {"epochs": 1, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "seed": 0, "temperature": 4.0}
    a, b = _small_cnn(3), _small_cnn(3)
    bench.reference_kd_fit(a, teacher, _loader(), alpha=0.9, **kwargs)
    bench.reference_kd_fit(b, teacher, _loader(), alpha=0.1, **kwargs)
    assert float((a[-1].weight - b[-1].weight).detach().abs().max()) > 1e-3


def test_weights_key_follows_every_weight():
    model = _small_cnn(0)
    key = bench.weights_key(model)
    assert bench.weights_key(copy.deepcopy(model)) == key
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1e-6
    assert bench.weights_key(model) != key
    assert len(key) == 16


def test_bench_config_names_bad_values():
    with pytest.raises(ConfigError, match="alpha"):
        bench.DistillBenchConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="low_rank_mode"):
        bench.DistillBenchConfig(low_rank_mode="tucker")
    assert bench.BENCH_CONFIGS["cpu"].student_epochs == 10
