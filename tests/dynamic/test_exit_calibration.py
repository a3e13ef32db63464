"""Thresholds chosen on the validation split: an accuracy bound or an average-MAC budget, by hand."""

from __future__ import annotations

import pytest
import torch

from netcompress import data, models
from netcompress.core.errors import ConfigError
from netcompress.dynamic import (
    EarlyExitConfig,
    add_early_exits,
    calibrate_early_exit,
    candidate_thresholds,
    choose_threshold,
    evaluate_early_exit,
    with_early_exits,
)
from netcompress.evaluation import evaluate


def _two_class(probs: list[float]) -> torch.Tensor:
    p = torch.tensor(probs)
    return torch.stack([p.log(), (1 - p).log()], dim=1)


# exit 0 predicts class 0 with these confidences; labels make samples 2 and 3 wrong there
HEAD = _two_class([0.95, 0.9, 0.8, 0.6])
LABELS = torch.tensor([0, 0, 1, 1])
FINAL = torch.nn.functional.one_hot(LABELS, 2).float() * 10  # the final exit is always right
MACS = [100, 400]


def test_candidates_sit_between_observed_scores():
    thresholds = candidate_thresholds([HEAD, FINAL], "confidence")
    assert thresholds == pytest.approx([-1.0, 0.7, 0.85, 0.925, 1.01])


def test_accuracy_bound_takes_the_fewest_macs_within_the_drop():
    zero = choose_threshold([HEAD, FINAL], LABELS, exit_macs=MACS, max_accuracy_drop=0.0)
    # samples 0 and 1 (right at exit 0) leave; 0.85 lies between 0.8 and 0.9
    assert zero["threshold"] == pytest.approx(0.85)
    assert zero["accuracy"] == 1.0 and zero["final_accuracy"] == 1.0 and zero["accuracy_drop"] == 0.0
    assert zero["expected_macs"] == pytest.approx(0.5 * 100 + 0.5 * 400)
    assert zero["macs_speedup"] == pytest.approx(400 / 250)
    assert zero["per_exit"] == [
        {"exit": 0, "count": 2, "share": 0.5, "accuracy": 1.0},
        {"exit": 1, "count": 2, "share": 0.5, "accuracy": 1.0},
    ]
    quarter = choose_threshold([HEAD, FINAL], LABELS, exit_macs=MACS, max_accuracy_drop=0.25)
    assert quarter["threshold"] == pytest.approx(0.7) and quarter["accuracy"] == 0.75
    assert quarter["expected_macs"] == pytest.approx((3 * 100 + 400) / 4)
    assert quarter["per_exit"][0] == {"exit": 0, "count": 3, "share": 0.75, "accuracy": pytest.approx(2 / 3)}


def test_mac_budget_takes_the_most_accurate_within_it():
    half = choose_threshold([HEAD, FINAL], LABELS, exit_macs=MACS, max_macs_fraction=0.5)
    assert half["threshold"] == pytest.approx(0.7) and half["expected_macs"] == pytest.approx(175)
    tight = choose_threshold([HEAD, FINAL], LABELS, exit_macs=MACS, max_macs=150)
    assert (
        tight["threshold"] == -1.0 and tight["accuracy"] == 0.5 and tight["per_exit"][1]["accuracy"] is None
    )
    with pytest.raises(ConfigError, match="max_macs=50.*costs 100"):
        choose_threshold([HEAD, FINAL], LABELS, exit_macs=MACS, max_macs=50)
    with pytest.raises(ConfigError, match="exactly one"):
        choose_threshold([HEAD, FINAL], LABELS, exit_macs=MACS, max_macs=50, max_accuracy_drop=0.1)


def test_entropy_candidates_route_the_same_way():
    # normalised entropy falls as confidence rises: the same routing exists for both criteria
    conf = choose_threshold([HEAD, FINAL], LABELS, exit_macs=MACS, max_accuracy_drop=0.0)
    ent = choose_threshold([HEAD, FINAL], LABELS, exit_macs=MACS, criterion="entropy", max_accuracy_drop=0.0)
    assert ent["exit_counts"] == conf["exit_counts"] == [2, 2]


def _loaders():
    bundle = data.load("synthetic", num_samples=160, input_shape=(1, 8, 8), num_classes=4, separation=2.0)
    return bundle.loaders(batch_size=32, eval_batch_size=40)


def test_calibrating_a_model_sets_its_threshold_and_matches_its_routing():
    train, val = _loaders()
    torch.manual_seed(0)
    ee = add_early_exits(
        models.create("digits_cnn", num_classes=4),
        exits=["features.2"],
        example_inputs=torch.randn(1, 1, 8, 8),
    )
    for head in ee.heads:
        head.fc.weight.data.mul_(20)
    choice = calibrate_early_exit(ee, val, max_macs_fraction=0.6)
    assert ee.threshold == choice["threshold"] and choice["macs_fraction"] <= 0.6
    assert sum(e["share"] for e in choice["per_exit"]) == pytest.approx(1.0)
    # the model routes the validation samples as the calibration counted them
    assert evaluate(ee, val)["accuracy"] == pytest.approx(choice["accuracy"])
    row = evaluate_early_exit(ee, val, thresholds=[choice["threshold"]])[0]
    assert row["exit_counts"] == choice["exit_counts"]


def test_method_calibrates_on_the_validation_split():
    train, val = _loaders()
    torch.manual_seed(0)
    model = models.create("digits_cnn", num_classes=4)
    ee, summary = with_early_exits(
        model, train, val_loader=val, example_inputs=torch.randn(2, 1, 8, 8), exits=["features.5"],
        epochs=1, progress=False, max_accuracy_drop=0.02,
    )  # fmt: skip
    calibration = summary["calibration"]
    assert ee.threshold == calibration["threshold"] == summary["deploy_threshold"]
    assert calibration["accuracy"] >= calibration["final_accuracy"] - 0.02
    assert [e["count"] for e in calibration["per_exit"]] == calibration["exit_counts"]
    with pytest.raises(ConfigError, match="deploy_threshold and max_accuracy_drop"):
        EarlyExitConfig(exits=["features.5"], deploy_threshold=0.9, max_accuracy_drop=0.01)
