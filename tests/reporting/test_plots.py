"""Every plot writes a PNG that PIL opens, of the requested pixel size, with no pyplot figure left open."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from netcompress.core.errors import ConfigError
from netcompress.reporting import (
    plot_accuracy_vs_params,
    plot_histograms,
    plot_history,
    plot_layer_sparsity,
    plot_lr,
    plot_stage_bars,
)

ROWS = [
    {
        "epoch": e,
        "lr": 0.1 * 0.5**e,
        "train_acc": 0.5 + 0.1 * e,
        "val_acc": 0.45 + 0.1 * e,
        "bn_sparsity": e / 4,
    }
    for e in range(5)
]
STAGES = [
    {"name": "original", "accuracy": 0.91, "size_bytes": 2_000_000, "latency_ms": 2.0},
    {"name": "pruned", "accuracy": 0.90, "size_bytes": 800_000, "latency_ms": 1.1},
    {"name": "int8", "accuracy": 0.89, "size_bytes": 210_000, "latency_ms": None},
]


def _png_size(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


CASES = {
    "history": (lambda p: plot_history(ROWS, p, metrics=["train_acc", "val_acc"]), (800, 500)),
    "history_twin": (
        lambda p: plot_history(ROWS, p, metrics=["train_acc"], secondary=["bn_sparsity"]),
        (800, 500),
    ),
    "lr": (lambda p: plot_lr(ROWS, p, log_y=True), (800, 400)),
    "layer_sparsity": (lambda p: plot_layer_sparsity({f"conv{i}": i / 10 for i in range(10)}, p), (800, 300)),
    "histograms": (
        lambda p: plot_histograms(
            {"lambda=0": np.random.rand(100), "lambda=1e-4": torch.rand(4, 25)}, p, title="g"
        ),
        (750, 400),
    ),
    "acc_vs_params": (
        lambda p: plot_accuracy_vs_params(
            {"0.95": [(256779, 0.75), (243940, 0.74)], "0.9": [(256779, 0.75)]}, p
        ),
        (800, 500),
    ),
    "stage_bars": (lambda p: plot_stage_bars(STAGES, p), (1040, 400)),
}


def test_stage_bars_of_a_large_sweep_are_horizontal_and_skip_unmeasured_metrics(tmp_path: Path) -> None:
    # 24 points with long names and no latency (E2's sweep): vertical bars with slanted names
    # collapsed the layout (matplotlib warned and drew an empty latency panel)
    stages = [
        {"name": f"model=cifar_vgg (cfg=narrow), scope=layer, amount=0.{i}", "accuracy": 0.7, "size_bytes": 10**6,
         "latency_ms": None}
        for i in range(24)
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_stage_bars(stages, tmp_path / "points.png")
    longest = max(len(s["name"]) for s in stages)
    assert _png_size(path) == (40 + 6 * longest + 300 * 2, 90 + 18 * 24)  # two panels, a row per stage


@pytest.mark.parametrize("name", sorted(CASES))
def test_plot_writes_png_of_expected_size(name: str, tmp_path: Path) -> None:
    make, size = CASES[name]
    path = make(tmp_path / "sub" / f"{name}.png")
    assert path == tmp_path / "sub" / f"{name}.png"
    assert _png_size(path) == size
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


def test_secondary_axis_changes_the_picture(tmp_path: Path) -> None:
    one = plot_history(ROWS, tmp_path / "one.png", metrics=["train_acc"])
    two = plot_history(ROWS, tmp_path / "two.png", metrics=["train_acc"], secondary=["bn_sparsity"])
    assert one.read_bytes() != two.read_bytes()


def test_default_metrics_skip_missing_validation(tmp_path: Path) -> None:
    rows = [{"epoch": 0, "train_acc": 0.5, "val_acc": None}, {"epoch": 1, "train_acc": 0.6, "val_acc": None}]
    assert _png_size(plot_history(rows, tmp_path / "h.png")) == (800, 500)
    # named explicitly (as a recipe runner does) the empty column is drawn as "no values"
    assert _png_size(plot_history(rows, tmp_path / "h2.png", metrics=["train_acc", "val_acc"])) == (800, 500)
    with pytest.raises(ConfigError, match="no column 'val_accuracy'"):
        plot_history(rows, tmp_path / "h.png", metrics=["val_accuracy"])


def test_plot_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'val_accuracy'"):
        plot_history(ROWS, tmp_path / "x.png", metrics=["val_accuracy"])
    with pytest.raises(ConfigError, match="'fc'"):
        plot_layer_sparsity({"conv": 0.5, "fc": 50.0}, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="'b'"):
        plot_histograms({"a": [1.0], "b": []}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
