"""Sweeps: one run per value, identical leading steps computed once, a combined report."""

from __future__ import annotations

import json

import pytest

from netcompress.core import ConfigError
from netcompress.recipes import run_recipe


def _recipe() -> dict:
    return {
        "name": "sw",
        "seed": 1,
        "model": {"name": "mlp", "in_features": 48, "hidden": [16], "num_classes": 4},
        "data": {
            "name": "synthetic",
            "num_samples": 96,
            "input_shape": [48],
            "num_classes": 4,
            "batch_size": 32,
        },
        "steps": [
            {"op": "train", "method": "supervised", "epochs": 1, "progress": False},
            {"op": "prune", "method": "l1_unstructured", "amount": 0.3},
        ],
        "sweep": {"steps.1.amount": [0.25, 0.75]},
        "evaluate": {"latency": False},
    }


def test_sweep_runs_each_point_and_trains_once(tmp_path):
    result = run_recipe(_recipe(), out_dir=tmp_path / "sweep", progress=False)
    assert [s["name"] for s in result.stages] == ["amount=0.25", "amount=0.75"]
    weights = 48 * 16 + 16 * 4
    # the prune step counts zeros over the selected weights; nonzero params also hold the biases
    assert [s["nonzero_params"] for s in result.stages] == [
        weights - round(0.25 * weights) + 20,
        weights - round(0.75 * weights) + 20,
    ]
    first, second = result.points
    state = json.loads((second.run_dir / "state.json").read_text())
    assert "reused_from" in state["finished_steps"][0] and "reused_from" not in state["finished_steps"][1]
    assert first.stages[1]["accuracy"] == second.stages[1]["accuracy"]  # the shared trained model
    metrics = json.loads((tmp_path / "sweep" / "metrics.json").read_text())
    assert [p["label"] for p in metrics["points"]] == ["amount=0.25", "amount=0.75"]
    assert (tmp_path / "sweep" / "report.html").stat().st_size > 0
    # a sweep over a number draws final accuracy against it
    assert (tmp_path / "sweep" / "plots" / "accuracy-vs-amount.png").stat().st_size > 1000
    assert "accuracy-vs-amount.png" in (tmp_path / "sweep" / "report.md").read_text()


def test_sweep_with_a_bad_value_fails_before_running(tmp_path):
    recipe = _recipe()
    recipe["sweep"] = {"steps.1.amout": [0.1]}
    with pytest.raises(ConfigError, match="amout"):
        run_recipe(recipe, out_dir=tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_sweep_histograms_get_one_panel_per_distinct_result(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from netcompress import reporting
    from netcompress.recipes import sweep

    drawn = {}
    monkeypatch.setattr(reporting, "plot_histograms", lambda data, path, **_: drawn.update(data))
    monkeypatch.setattr(reporting, "plot_stage_bars", lambda *a, **k: None)
    monkeypatch.setattr(
        reporting, "write_report", lambda run_dir, **k: (run_dir / "r.md", run_dir / "r.html")
    )

    def point(gammas):
        step = {
            "summary": {"histograms": {"gamma": gammas}},
            "label": "t",
            "dir": "01-t",
            "has_history": False,
        }
        return SimpleNamespace(steps=[step], run_dir=tmp_path)

    labels = [
        "lambda_=0, percent=0.5",
        "lambda_=0, percent=0.9",
        "lambda_=1, percent=0.5",
        "lambda_=1, percent=0.9",
    ]
    points = [(label, []) for label in labels]
    results = [point([0.9, 0.8]), point([0.9, 0.8]), point([0.0, 0.1]), point([0.0, 0.1])]
    sweep._write_sweep_report(tmp_path, {"sweep": {}}, points, results, [])
    assert drawn == {"lambda_=0": [0.9, 0.8], "lambda_=1": [0.0, 0.1]}
    assert sweep.shared_label(["a=1, b=2", "a=3, b=2"]) == "b=2"
    assert sweep.shared_label(["a=1", "a=2"]) == "a=1 / a=2"


def test_numeric_axis_series_groups_points_by_the_other_swept_values():
    from netcompress.recipes.sweep import numeric_axis_series

    sweep = {
        "model": [{"name": "vgg", "cfg": "narrow"}, {"name": "resnet"}],
        "steps.1.scope": ["global", "layer"],
        "steps.1.amount": [0.0, 0.5, 0.9],
    }
    stages = [{"accuracy": i / 100} for i in range(12)]
    stages[4]["accuracy"] = None  # a point without the metric is left out of its line
    axis, series = numeric_axis_series(sweep, stages)
    assert axis == "amount"
    assert list(series) == [
        "model=vgg (cfg=narrow), scope=global",
        "model=vgg (cfg=narrow), scope=layer",
        "model=resnet, scope=global",
        "model=resnet, scope=layer",
    ]
    assert series["model=vgg (cfg=narrow), scope=layer"] == [(0.0, 0.03), (0.9, 0.05)]
    assert series["model=resnet, scope=layer"] == [(0.0, 0.09), (0.5, 0.1), (0.9, 0.11)]
    # two numeric paths: the last is the x axis, the first names the lines
    axis, series = numeric_axis_series(
        {"steps.0.lambda_": [0, 1e-4], "steps.1.percent": [0.5, 0.9]},
        [{"accuracy": a} for a in (0.6, 0.2, 0.57, 0.22)],
    )
    assert axis == "percent"
    assert series == {"lambda_=0": [(0.5, 0.6), (0.9, 0.2)], "lambda_=0.0001": [(0.5, 0.57), (0.9, 0.22)]}


@pytest.mark.parametrize(
    "sweep",
    [
        {"model": ["a", "b"]},  # nothing numeric
        {"steps.0.flag": [True, False]},  # booleans are not an axis
        {"steps.1.amount": [0.5]},  # one value is not a line
        [{"steps.1.amount": 0.5}, {"steps.1.amount": 0.9}],  # listed points have no grid
    ],
)
def test_numeric_axis_series_is_none_without_a_numeric_axis(sweep):
    from netcompress.recipes.sweep import numeric_axis_series

    assert numeric_axis_series(sweep, [{"accuracy": 0.5}] * 2) is None
