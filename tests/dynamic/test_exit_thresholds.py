"""One threshold per exit, chosen on validation, and the oracle bound, on hand-computed examples."""

from __future__ import annotations

import itertools

import pytest
import torch

from netcompress import data, models
from netcompress.core.errors import ConfigError
from netcompress.dynamic import (
    EarlyExitConfig,
    add_early_exits,
    calibrate_exit_thresholds,
    choose_exit_thresholds,
    choose_threshold,
    evaluate_early_exit,
    oracle_exit_macs,
    route_exits,
    trade_off_rows,
    with_early_exits,
)
from netcompress.dynamic.exit_thresholds import _ALL, _NONE, _levels, _Routing
from netcompress.evaluation import evaluate


def _class0(probs: list[float]) -> torch.Tensor:
    """Two-class logits whose class-0 probability is ``probs`` (so confidence = max(p, 1 - p))."""
    p = torch.tensor(probs)
    return torch.stack([p.log(), (1 - p).log()], dim=1)


# eight samples of class 0. Head 0 is right and sure (0.8) on samples 4-7, WRONG and nearly as sure
# (0.75 for class 1) on samples 0-3; head 1 is right on all, less sure (0.7); the final exit is right.
LABELS = torch.zeros(8, dtype=torch.long)
HEAD0 = _class0([0.25] * 4 + [0.8] * 4)
HEAD1 = _class0([0.7] * 8)
FINAL = _class0([0.9] * 8)
LOGITS = [HEAD0, HEAD1, FINAL]
MACS = [10, 20, 40]


def test_one_threshold_per_exit_beats_the_shared_one_at_no_loss():
    single = choose_threshold(LOGITS, LABELS, exit_macs=MACS, max_accuracy_drop=0.0)
    # a shared threshold above 0.75 keeps samples 0-3 from head 0, and then from head 1 (0.7) too
    assert single["exit_counts"] == [4, 0, 4] and single["expected_macs"] == 25 and single["accuracy"] == 1.0
    per_exit = choose_exit_thresholds(LOGITS, LABELS, exit_macs=MACS, max_accuracy_drop=0.0)
    # head 0 between 0.75 and 0.8; head 1 lets everybody out
    assert per_exit["thresholds"] == pytest.approx([0.775, _ALL])
    assert per_exit["exit_counts"] == [4, 4, 0] and per_exit["accuracy"] == 1.0
    assert per_exit["expected_macs"] == pytest.approx(15) and per_exit["macs_speedup"] == pytest.approx(
        40 / 15
    )
    assert per_exit["single"]["expected_macs"] == 25 and per_exit["accuracy_drop"] == 0.0
    assert per_exit["per_exit"][1] == {"exit": 1, "count": 4, "share": 0.5, "accuracy": 1.0}
    # the thresholds route the samples that way through route_exits (what the model runs)
    assert route_exits(LOGITS, threshold=per_exit["thresholds"]).tolist() == [1] * 4 + [0] * 4


def test_mac_budget_and_accuracy_bound_per_exit():
    # within 18 MACs a shared threshold reaches 4/8 (everyone at head 0); per exit 8/8 at 15
    single = choose_threshold(LOGITS, LABELS, exit_macs=MACS, max_macs=18)
    assert single["accuracy"] == 0.5 and single["expected_macs"] == 10
    budget = choose_exit_thresholds(LOGITS, LABELS, exit_macs=MACS, max_macs=18)
    assert budget["accuracy"] == 1.0 and budget["expected_macs"] == pytest.approx(15)
    assert budget["single"]["accuracy"] == 0.5
    fraction = choose_exit_thresholds(LOGITS, LABELS, exit_macs=MACS, max_macs_fraction=0.4)
    assert fraction["exit_counts"] == budget["exit_counts"] == [4, 4, 0]
    # two samples may be lost: two of samples 0-3 cannot leave at head 0 alone (same score): 15 MACs
    # stays; four may: everybody at head 0, 10 MACs
    assert (
        choose_exit_thresholds(LOGITS, LABELS, exit_macs=MACS, max_accuracy_drop=0.25)["expected_macs"] == 15
    )
    loose = choose_exit_thresholds(LOGITS, LABELS, exit_macs=MACS, max_accuracy_drop=0.5)
    assert loose["exit_counts"] == [8, 0, 0] and loose["accuracy"] == 0.5 and loose["expected_macs"] == 10
    with pytest.raises(ConfigError, match="max_macs=5.*costs 10"):
        choose_exit_thresholds(LOGITS, LABELS, exit_macs=MACS, max_macs=5)
    with pytest.raises(ConfigError, match="exactly one"):
        choose_exit_thresholds(LOGITS, LABELS, exit_macs=MACS)
    with pytest.raises(ConfigError, match="2 MAC counts for 3 exits"):
        choose_exit_thresholds(LOGITS, LABELS, exit_macs=[1, 2], max_macs=5)


def test_entropy_thresholds_route_the_same_samples():
    conf = choose_exit_thresholds(LOGITS, LABELS, exit_macs=MACS, max_accuracy_drop=0.0)
    ent = choose_exit_thresholds(LOGITS, LABELS, exit_macs=MACS, criterion="entropy", max_accuracy_drop=0.0)
    assert ent["exit_counts"] == conf["exit_counts"] == [4, 4, 0]
    assert ent["thresholds"][1] == pytest.approx(-_ALL)  # entropy <= 1.01: everybody leaves at head 1
    assert route_exits(LOGITS, criterion="entropy", threshold=ent["thresholds"]).tolist() == [1] * 4 + [0] * 4


def test_oracle_counts_the_earliest_right_exit_and_gives_up_the_dearest_samples():
    exact = oracle_exit_macs(LOGITS, LABELS, exit_macs=MACS)
    assert exact["macs"] == pytest.approx(15) and exact["accuracy"] == 1.0
    assert exact["agree_macs"] == pytest.approx(15)  # head 0 agrees with the final exit on 4-7
    # one sample may go: one of 0-3 (20 MACs to be right) leaves wrong at head 0
    loose = oracle_exit_macs(LOGITS, LABELS, exit_macs=MACS, max_accuracy_drop=1 / 8)
    assert loose["macs"] == pytest.approx(110 / 8) and loose["accuracy"] == 7 / 8
    assert loose["macs_speedup"] == pytest.approx(320 / 110)
    # a sample no exit gets right leaves at the first and does not count against the bound
    labels = LABELS.clone()
    labels[7] = 1
    odd = oracle_exit_macs(LOGITS, labels, exit_macs=MACS)
    assert odd["final_accuracy"] == 7 / 8 and odd["correct_anywhere"] == 7 / 8
    assert odd["macs"] == pytest.approx((4 * 20 + 3 * 10 + 10) / 8)


def _random_problem(seed: int, n: int = 60, heads: int = 2):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    logits = []
    for strength in [*(torch.linspace(0.5, 2.0, heads).tolist()), 3.0]:
        lg = torch.randn(n, 3, generator=g)
        lg[torch.arange(n), labels] += strength * torch.rand(n, generator=g) * 2
        logits.append(lg)
    return logits, labels, [10 * (i + 1) for i in range(heads)] + [10 * heads + 40]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_per_exit_choice_is_feasible_never_worse_than_shared_and_above_the_oracle(seed):
    logits, labels, macs = _random_problem(seed, heads=3)
    routing = _Routing(logits, labels, macs, "confidence")
    levels = [_levels(routing.u[i], 8).tolist() for i in range(3)]
    every = [routing.cost(torch.tensor(v)) for v in itertools.product(*levels)]  # 9 ** 3 routings
    for drop in (0.0, 0.05):
        per_exit = choose_exit_thresholds(
            logits, labels, exit_macs=macs, max_accuracy_drop=drop, max_levels=8
        )
        assert per_exit["accuracy"] >= per_exit["final_accuracy"] - drop - 1e-9
        assert per_exit["expected_macs"] <= per_exit["single"]["expected_macs"] + 1e-9
        oracle = oracle_exit_macs(logits, labels, exit_macs=macs, max_accuracy_drop=drop)
        assert oracle["macs"] <= per_exit["expected_macs"] + 1e-9
        # brute force over every combination of the same levels
        need = round(per_exit["final_accuracy"] * len(labels) - drop * len(labels))
        best = min(c[0] for c in every if c[1] >= need)
        assert per_exit["expected_macs"] * len(labels) <= best + 1e-6  # the single start may lie off the grid
    budget = choose_exit_thresholds(logits, labels, exit_macs=macs, max_macs_fraction=0.6, max_levels=8)
    assert budget["macs_fraction"] <= 0.6 + 1e-9 and budget["accuracy"] >= budget["single"]["accuracy"]
    most = max(c[1] for c in every if c[0] <= 0.6 * macs[-1] * len(labels) + 1e-6)
    assert round(budget["accuracy"] * len(labels)) >= most


def test_sweep_counts_match_routing_every_level():
    logits, labels, macs = _random_problem(5, heads=3)
    routing = _Routing(logits, labels, macs, "confidence")
    v = torch.tensor([0.9, 0.6, _NONE], dtype=torch.float64)
    levels = _levels(routing.u[1], 16)
    total, correct = routing.sweep(v, 1, levels)
    for k, level in enumerate(levels.tolist()):
        w = v.clone()
        w[1] = level
        (row,) = trade_off_rows(
            logits, labels, exit_macs=macs, criterion="confidence", thresholds=[w.tolist()]
        )
        assert float(total[k]) == pytest.approx(row["expected_macs"] * len(labels))
        assert int(correct[k]) == round(row["accuracy"] * len(labels))


def test_calibrating_a_model_sets_one_threshold_per_head_and_the_model_routes_so():
    bundle = data.load("synthetic", num_samples=160, input_shape=(1, 8, 8), num_classes=4, separation=2.0)
    _, val = bundle.loaders(batch_size=32, eval_batch_size=40)
    torch.manual_seed(0)
    ee = add_early_exits(
        models.create("digits_cnn", num_classes=4),
        exits=["features.2", "features.5"],
        example_inputs=torch.randn(1, 1, 8, 8),
    )
    for head in ee.heads:
        head.fc.weight.data.mul_(20)
    choice = calibrate_exit_thresholds(ee, val, max_macs_fraction=0.7)
    assert ee.threshold == choice["thresholds"] and len(choice["thresholds"]) == 2
    assert choice["macs_fraction"] <= 0.7 + 1e-9
    assert evaluate(ee, val)["accuracy"] == pytest.approx(choice["accuracy"])
    row = evaluate_early_exit(ee, val, thresholds=[choice["thresholds"]])[0]
    assert row["exit_counts"] == choice["exit_counts"]
    with pytest.raises(ConfigError, match="one number per exit head \\(2 heads\\)"):
        ee.set_policy(threshold=[0.5])


def test_method_chooses_one_threshold_per_exit_on_validation():
    bundle = data.load("synthetic", num_samples=160, input_shape=(1, 8, 8), num_classes=4, separation=2.0)
    train, val = bundle.loaders(batch_size=32, eval_batch_size=40)
    torch.manual_seed(0)
    ee, summary = with_early_exits(
        models.create("digits_cnn", num_classes=4), train, val_loader=val, example_inputs=torch.randn(2, 1, 8, 8),
        exits=["features.2", "features.5"], epochs=1, progress=False, max_accuracy_drop=0.02,
        per_exit_thresholds=True,
    )  # fmt: skip
    calibration = summary["calibration"]
    assert ee.threshold == calibration["thresholds"] == summary["deploy_threshold"]
    assert len(ee.threshold) == 2 and calibration["accuracy"] >= calibration["final_accuracy"] - 0.02
    assert calibration["expected_macs"] <= calibration["single"]["expected_macs"] + 1e-9
    assert evaluate(ee, val)["accuracy"] == pytest.approx(calibration["accuracy"])
    with pytest.raises(ConfigError, match="per_exit_thresholds needs max_accuracy_drop"):
        EarlyExitConfig(exits=["features.5"], per_exit_thresholds=True)
