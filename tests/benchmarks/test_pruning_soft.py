"""The session-14 faded rows: registered in the latency mode, and one runs on a tiny net (no CIFAR-10)."""

from __future__ import annotations

import cifar_protocol as cp
import pruning_latency as pl
import pruning_soft as so
import torch
from pruning_methods import METHODS, Context, PruningBenchConfig, macs_of
from torch import nn


def test_rows_are_registered_in_the_latency_mode() -> None:
    assert so.SOFT_ROWS and all(name in METHODS.names() and name in pl.LATENCY_ROWS for name in so.SOFT_ROWS)


def test_a_faded_row_reaches_the_mac_budget_and_counts_its_epochs(tmp_path) -> None:
    torch.manual_seed(0)
    base = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(3)
    ]
    config = PruningBenchConfig(high_mac_reduction=4.0, finetune_epochs=5)
    example = torch.randn(1, 3, 8, 8)
    ctx = Context(None, cp.PROTOCOLS["quick"], config, batches, None, example, 0, tmp_path)
    before = [p.clone() for p in base.parameters()]
    pruned = METHODS.get("nc_macs_high_shrink2")(base, ctx)
    assert pruned.epochs_used == 2
    reduction = macs_of(base, example) / macs_of(pruned.model, example)
    assert 4.0 <= reduction <= 4.4 and reduction == pruned.info["reduction_check"]
    assert [r["step"] for r in pruned.info["refreshes"]] == [1]  # 6 steps: the next choice would be step 11
    assert all(torch.equal(a, b) for a, b in zip(before, base.parameters()))  # the baseline is left untouched
