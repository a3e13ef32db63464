"""A stage whose latency spreads too wide is re-measured once, then flagged; run and report share a baseline."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import netcompress.evaluation as evaluation
from netcompress.cli.main import main
from netcompress.recipes import run_recipe
from netcompress.recipes.stages import measure_stage


def _fake_profile(spreads):
    calls = []

    def profile(model, example_inputs, *, latency, batch_sizes, repeats, rounds):
        calls.append((repeats, rounds))
        spread = spreads[len(calls) - 1]
        return {
            "params": 1,
            "latency_ms": 0.1 * len(calls),
            "latency_spread": spread,
            "latency_b64_spread": 5.0,
        }

    return profile, calls


@pytest.mark.parametrize(
    ("spreads", "calls", "noisy"),
    [
        ([0.2], [(20, 3)], False),
        ([3.0, 0.3], [(20, 3), (40, 6)], False),
        ([3.0, 2.0], [(20, 3), (40, 6)], True),
    ],
    ids=["steady", "noisy then steady", "noisy twice"],
)
def test_a_wide_spread_is_measured_again_then_flagged(spreads, calls, noisy, monkeypatch):
    profile, seen = _fake_profile(spreads)
    monkeypatch.setattr(evaluation, "profile", profile)
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: {"accuracy": 1.0, "loss": 0.0})
    stage = measure_stage(nn.Linear(2, 2), None, torch.zeros(1, 2), {"repeats": 20}, name="s")
    assert seen == calls and stage["latency_noisy"] is noisy
    assert stage["latency_ms"] == pytest.approx(0.1 * len(calls))  # the second measurement is the one kept
    assert stage.get("latency_remeasured", False) is (len(calls) == 2)


@pytest.mark.parametrize(
    ("latencies", "macs", "calls", "noisy"),
    [
        ([0.2], 100, 1, False),  # as fast as its work
        ([54.0, 0.2], 100, 2, False),  # a stall: measured again, then fine
        ([54.0, 50.0], 100, 2, True),  # stays 250x slower than the initial model with no more MACs: flagged
        ([54.0], 10_000, 1, False),  # more work than the reference: slow is plausible
    ],
    ids=["normal", "stall then normal", "stall twice", "more MACs"],
)
def test_a_stage_far_slower_than_its_work_is_measured_again_then_flagged(
    latencies, macs, calls, noisy, monkeypatch
):
    seen = []

    def profile(model, example_inputs, *, latency, batch_sizes, repeats, rounds):
        seen.append(rounds)
        return {"macs": macs, "latency_ms": latencies[len(seen) - 1], "latency_spread": 0.1}

    monkeypatch.setattr(evaluation, "profile", profile)
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: {"accuracy": 1.0, "loss": 0.0})
    reference = {"macs": 100, "latency_ms": 0.2}
    stage = measure_stage(
        nn.Linear(2, 2), None, torch.zeros(1, 2), {"repeats": 20}, name="s", reference=reference
    )
    assert len(seen) == calls and stage["latency_noisy"] is noisy


def test_run_and_report_take_ratios_against_the_same_stage(tmp_path, capsys):
    recipe = {
        "name": "tiny",
        "model": {"name": "mlp", "in_features": 16, "hidden": [8], "num_classes": 3},
        "data": {
            "name": "synthetic",
            "num_samples": 60,
            "input_shape": [16],
            "num_classes": 3,
            "batch_size": 16,
        },
        "steps": [
            {"op": "train", "method": "supervised", "epochs": 1, "progress": False},
            {"op": "prune", "method": "l1_unstructured", "amount": 0.5},
        ],
        "evaluate": {"latency": False},
    }
    run_recipe(recipe, out_dir=tmp_path / "r", progress=True)
    run_out = capsys.readouterr().out
    assert "ratios relative to 'train/supervised'" in run_out
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["baseline"] == 1
    assert (
        "relative to 'train/supervised', the model after the first step"
        in (tmp_path / "r" / "report.md").read_text()
    )
    assert main(["report", str(tmp_path / "r")]) == 0
    assert "ratios relative to 'train/supervised'" in capsys.readouterr().out
