"""Recipe steps prune/channel, prune/slimming, prune/auto and train/slimming, called through the registry."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import netcompress.pruning  # noqa: F401  (registers the methods)
from netcompress.core.errors import ConfigError
from netcompress.core.methods import METHODS, MethodData

X = torch.randn(2, 3, 8, 8)


def vgg() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def context(tmp_path) -> MethodData:
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)) for _ in range(2)
    ]
    return MethodData(
        train_loader=batches, val_loader=batches, example_inputs=X, out_dir=tmp_path,
        num_classes=10, progress=False,
    )  # fmt: skip


def run(key: str, params: dict, tmp_path, model: nn.Module | None = None):
    spec = METHODS.get(key)
    config = spec.config.from_dict(params, where=f"step {key}")
    result = spec.fn(model or vgg(), config, context(tmp_path))
    json.dumps(result.summary)  # every summary is JSON-able
    return result


def test_prune_channel_step(tmp_path) -> None:
    result = run("prune/channel", {"ratio": 0.5, "importance": "l2", "scope": "local"}, tmp_path)
    assert result.summary["params_after"] == 762 and result.summary["params_before"] == 2090
    assert result.model(X).shape == (2, 10)
    taylor = run("prune/channel", {"ratio": 0.5, "importance": "taylor", "max_batches": 1}, tmp_path)
    assert taylor.summary["params_after"] == 762


def test_prune_slimming_step_writes_gammas(tmp_path) -> None:
    model = vgg()
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(0.1, 0.8, 8))
        model[5].weight.copy_(torch.linspace(0.12, 0.87, 16))
    result = run("prune/slimming", {"percent": 0.5}, tmp_path, model)
    assert result.summary["channels_pruned"] == 12  # distinct gammas: exactly int(24 * 0.5) go
    assert result.model[0].out_channels + result.model[4].out_channels == 12
    gammas = json.loads((tmp_path / "bn_gammas_before.json").read_text())
    assert sorted(gammas) == ["1", "5"] and len(gammas["5"]) == 16
    assert sum(result.summary["bn_gamma_histogram"]["counts"]) == 24


def test_prune_auto_step(tmp_path) -> None:
    result = run("prune/auto", {"target": "params", "reduction": 2.0}, tmp_path)
    assert result.summary["achieved_reduction"] >= 2.0
    assert result.summary["target_before"] == 2090


def test_step_configs_reject_unknown_and_bad_keys() -> None:
    with pytest.raises(ConfigError, match="'ratoi'"):
        METHODS.get("prune/channel").config.from_dict({"ratoi": 0.5}, where="step 1")
    with pytest.raises(ConfigError, match="importance"):
        METHODS.get("prune/channel").config.from_dict({"importance": "magic"})
    with pytest.raises(ConfigError, match="percent"):
        METHODS.get("prune/slimming").config.from_dict({"percent": 2.0})
    with pytest.raises(ConfigError, match="lambda_"):
        METHODS.get("train/slimming").config.from_dict({"lambda_": -1.0})


def test_train_slimming_step_records_bn_sparsity(tmp_path) -> None:
    pytest.importorskip("netcompress.training.loop")
    result = run("train/slimming", {"epochs": 1, "lr": 0.01, "lambda_": 1e-2, "progress": False}, tmp_path)
    assert len(result.history) == 1
    row = result.history[0]
    assert 0.0 <= row["bn_sparsity"] <= 1.0 and row["bn_gamma_mean_abs"] > 0.0
    assert result.summary["final_bn_sparsity"] == row["bn_sparsity"]
    assert (tmp_path / "bn_gammas.json").exists()
