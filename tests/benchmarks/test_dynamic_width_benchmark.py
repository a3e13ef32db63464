"""benchmarks/dynamic_width.py: its per-width rows are the extracted models' exact sizes, and the report renders."""

from __future__ import annotations

import argparse

import pytest
import torch

dw = pytest.importorskip("dynamic_width")


def test_rows_describe_the_extracted_models_and_the_report_renders() -> None:
    from netcompress import models
    from netcompress.dynamic import make_slimmable

    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    slim = make_slimmable(
        models.create("cifar_resnet20", num_classes=10), widths=(0.5, 1.0), example_inputs=x[:1]
    )
    rows = dw.width_rows(slim, [(x, y)], x[:1], batch=2, rounds=1)
    assert [(r["width"], r["channels"], r["params"]) for r in rows] == [
        (0.5, "8-16-32", 68786),
        (1.0, "16-32-64", 272474),
    ]
    assert all(r["max_abs_diff"] < 1e-5 and 0.0 <= r["accuracy"] <= 1.0 and r["latency_ms"] > 0 for r in rows)
    assert rows[0]["macs"] < rows[1]["macs"]
    args = argparse.Namespace(widths=[0.5, 1.0], num_random=1, no_distill=False, lr=0.1, batch=2)
    machine = {
        "cpu_count": 2,
        "cpu": "cpu",
        "torch": "2",
        "torch_threads": 1,
        "load_average": [1.0, 1.0, 1.0],
    }
    result = {"epochs": 2, "train_s": 10.0, "rows": rows, "machine": machine, "argv": ["--epochs", "2", "--write"],
              "protocol": {"train_subset": 1000, "test_subset": 1000, "batch_size": 50, "train_threads": 1}}  # fmt: skip
    text = dw.report(result, args)
    assert "dynamic_width.py --epochs 2 --write" in text and "| 0.50 | 8-16-32 |" in text
