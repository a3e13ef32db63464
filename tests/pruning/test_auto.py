"""prune_to_target: automatic per-layer rates reach a MAC / parameter reduction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.pruning.auto import prune_to_target
from netcompress.pruning.channel import count_params, count_total_macs

X = torch.randn(2, 3, 8, 8)


def net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


@pytest.mark.parametrize(("target", "reduction"), [("macs", 3.5), ("macs", 2.0), ("params", 2.5)])
def test_global_reaches_the_target_within_tolerance(target: str, reduction: float) -> None:
    model = net()
    small, summary = prune_to_target(model, X, target=target, reduction=reduction, method="global")
    measure = count_total_macs if target == "macs" else (lambda m, _x: count_params(m))
    achieved = measure(model, X) / measure(small, X)
    assert achieved == pytest.approx(summary["achieved_reduction"])
    assert reduction <= achieved <= reduction * 1.1  # reached, and not overshot by more than 10%
    assert small(X).shape == (2, 10)
    assert {tuple(r["layers"]) for r in summary["rates"]} == {("0",), ("3",), ("7",)}
    assert all(0.0 <= r["rate"] < 1.0 for r in summary["rates"])


def _loader():
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(2)
    ]


def test_sensitivity_reaches_the_target_and_reports_drops() -> None:
    model = net()
    small, summary = prune_to_target(
        model,
        X,
        target="macs",
        reduction=2.0,
        method="sensitivity",
        loader=_loader(),
        rate_grid=(0.25, 0.5, 0.75),
    )
    assert 2.0 <= summary["achieved_reduction"] <= 3.0  # one grid step of one layer past the target at most
    assert len(summary["sensitivity"]) == 3 and all(
        len(s["accuracy_drop"]) == 3 for s in summary["sensitivity"]
    )
    assert 0.0 <= summary["baseline_accuracy"] <= 1.0
    assert small(X).shape == (2, 10)


def test_unreachable_target_and_bad_input_are_errors() -> None:
    with pytest.raises(ConfigError, match="cannot reach a 1000.0x macs reduction"):
        prune_to_target(net(), X, reduction=1000.0)
    with pytest.raises(ConfigError, match="loader"):
        prune_to_target(net(), X, method="sensitivity")
    with pytest.raises(ConfigError, match="target"):
        prune_to_target(net(), X, target="latency")
