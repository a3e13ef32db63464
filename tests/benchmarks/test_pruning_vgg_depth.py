"""The session-16 depth + width rows: registered in the latency mode, and they run on a tiny VGG (no CIFAR-10)."""

from __future__ import annotations

import cifar_protocol as cp
import pruning_latency as pl
import pruning_vgg_depth as vd
import pytest
import torch
from pruning_methods import METHODS, Context, PruningBenchConfig, macs_of
from torch import nn

from netcompress.models.vgg import cifar_vgg


def test_rows_are_registered_in_the_latency_mode() -> None:
    assert vd.VGG_DEPTH_ROWS
    assert all(name in METHODS.names() and name in pl.LATENCY_ROWS for name in vd.VGG_DEPTH_ROWS)


def _ctx(tmp_path) -> tuple[nn.Module, Context]:
    torch.manual_seed(0)
    base = cifar_vgg(cfg=[16, 16, "M", 32, 32, "M", 32, 32], num_classes=10).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(3)
    ]
    config = PruningBenchConfig(high_mac_reduction=4.0, finetune_epochs=5)
    example = torch.randn(1, 3, 8, 8)
    return base, Context(None, cp.PROTOCOLS["quick"], config, batches, batches, example, 0, tmp_path)


@pytest.mark.parametrize(
    "row", ["nc_macs_high_depth_c24", "nc_macs_high_depth_c2_id", "nc_macs_high_depth_c2_shrink2"]
)
def test_a_depth_row_removes_its_layers_and_reaches_the_mac_budget(tmp_path, row: str) -> None:
    base, ctx = _ctx(tmp_path)
    before = [p.clone() for p in base.parameters()]
    pruned = METHODS.get(row)(base, ctx)
    assert pruned.info["removed"] == ["features.3", "features.10", "features.17"][: 2 if "c24" in row else 1]
    assert pruned.epochs_used == (2 if row.endswith("shrink2") else 0)
    reduction = macs_of(base, ctx.example) / macs_of(pruned.model, ctx.example)
    assert 4.0 <= reduction <= 4.0 * 1.1
    removed = [pruned.model.features[int(n.split(".")[1])] for n in pruned.info["removed"]]
    assert all(isinstance(m, nn.Identity) for m in removed)
    assert (pruned.info["refit_errors"] is None) == row.endswith("_id")
    assert all(torch.equal(a, b) for a, b in zip(before, base.parameters()))  # the baseline is left untouched


def test_square_convs_names_the_in_equals_out_convolutions() -> None:
    assert vd.square_convs(cifar_vgg(cfg="narrow")) == ["features.3", "features.10", "features.17"]
