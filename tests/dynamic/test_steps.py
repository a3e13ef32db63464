"""Recipe steps dynamic/early_exit and dynamic/slimmable: summaries, curves, deploy options, config errors."""

from __future__ import annotations

import json

import pytest
import torch

import netcompress.dynamic  # noqa: F401  (registers the steps)
from netcompress import data, models
from netcompress.core.errors import ConfigError
from netcompress.core.methods import METHODS, MethodData
from netcompress.dynamic import EarlyExitModel, SlimmableModel, exit_path_macs


def _context(tmp_path) -> MethodData:
    bundle = data.load("synthetic", num_samples=128, input_shape=(1, 8, 8), num_classes=4, separation=2.0)
    train, test = bundle.loaders(batch_size=32, eval_batch_size=64)
    return MethodData(
        train_loader=train, val_loader=test, example_inputs=torch.randn(2, 1, 8, 8), out_dir=tmp_path, num_classes=4, progress=False,
    )  # fmt: skip


def _run(key: str, params: dict, tmp_path, model=None):
    spec = METHODS.get(key)
    config = spec.config.from_dict(params, where=f"step {key}")
    result = spec.fn(model or models.create("digits_cnn", num_classes=4), config, _context(tmp_path))
    assert json.loads(json.dumps(result.summary)) == result.summary  # JSON-able as it stands
    return result


def test_early_exit_step_trains_sweeps_and_deploys(tmp_path):
    params = {"exits": ["features.5"], "thresholds": [0.0, 0.9, 1.01], "epochs": 2, "deploy_threshold": 0.9}
    result = _run("dynamic/early_exit", params, tmp_path)
    ee = result.model
    assert isinstance(ee, EarlyExitModel) and ee.threshold == 0.9 and ee.criterion == "confidence"
    curve = result.summary["curves"]["accuracy vs MACs"]
    macs = exit_path_macs(ee, torch.randn(1, 1, 8, 8))
    assert curve["x_label"] == "MACs" and curve["x"][0] == macs[0] and curve["x"][-1] == macs[-1]
    assert curve["y"][-1] == pytest.approx(result.summary["final_val_acc"])
    assert len(result.history) == 2 and "exit0_train_acc" in result.history[-1]
    assert result.summary["head_params"] == 32 * 4 + 4
    assert len(json.loads((tmp_path / "early_exit.json").read_text())) == 3
    assert (tmp_path / "accuracy_vs_macs.png").stat().st_size > 1000
    # a second run in the same folder resumes from the step's checkpoint: same weights, same curve
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    again = _run("dynamic/early_exit", params, tmp_path)
    assert again.summary["curves"] == result.summary["curves"]
    assert again.history == result.history  # the saved rows, time_s included: nothing was retrained


def test_early_exit_step_heads_only_without_training(tmp_path):
    model = models.create("digits_cnn", num_classes=4)
    result = _run(
        "dynamic/early_exit",
        {"exits": ["features.2"], "criterion": "entropy", "epochs": 0, "head": "pool_mlp"},
        tmp_path,
        model,
    )
    assert result.history is None and result.summary["epochs"] == 0
    assert [r["threshold"] for r in result.summary["trade_off"]] == [
        1.0,
        0.8,
        0.6,
        0.5,
        0.4,
        0.3,
        0.2,
        0.1,
        0.05,
        0.0,
    ]
    assert result.model.threshold is None  # no deploy threshold: eval runs the full network


def test_slimmable_step_extracts_deploy_width(tmp_path):
    params = {"widths": [0.25, 0.5, 1.0], "epochs": 1, "deploy_width": 0.5, "sandwich": True}
    result = _run("dynamic/slimmable", params, tmp_path)
    assert not isinstance(result.model, SlimmableModel)
    # digits_cnn at half width with 4 classes: 72 + 16 + 1152 + 32 + 4608 + 64 + 32 * 4 + 4
    assert result.summary["deployed_params"] == sum(p.numel() for p in result.model.parameters()) == 6076
    curve = result.summary["curves"]["accuracy vs MACs"]
    assert len(curve["x"]) == 3 and curve["x"] == sorted(curve["x"])
    assert result.summary["per_width"]["w0.5"]["params"] == 6076
    assert {"w0.25_train_acc", "w1_train_acc"} <= set(result.history[-1])


def test_slimmable_step_keeps_slimmable_model_without_deploy_width(tmp_path):
    result = _run("dynamic/slimmable", {"widths": [0.5, 1.0], "epochs": 0}, tmp_path)
    assert isinstance(result.model, SlimmableModel) and result.model.width == 1.0


@pytest.mark.parametrize(
    ("key", "params", "message"),
    [
        ("dynamic/early_exit", {"exits": []}, "exits is empty"),
        ("dynamic/early_exit", {"exits": ["a"], "exit_weights": [1.0]}, "needs 2"),
        ("dynamic/early_exit", {"exits": ["a"], "criterion": "margin"}, "criterion"),
        ("dynamic/early_exit", {"exits": ["a"], "threshold": 0.5}, "unknown key 'threshold'"),
        ("dynamic/slimmable", {"widths": [0.5]}, "must include 1.0"),
        ("dynamic/slimmable", {"deploy_width": 0.3}, "deploy_width"),
        ("dynamic/slimmable", {"widths": [0.5, 1.0], "width_weights": [1.0]}, "width_weights"),
    ],
)
def test_config_errors_name_the_key(key, params, message):
    with pytest.raises(ConfigError, match=message):
        METHODS.get(key).config.from_dict(params, where=f"step {key}")
