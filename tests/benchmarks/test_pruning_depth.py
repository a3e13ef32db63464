"""Session 13's depth rows: registered as latency rows, checked against the targets, and the KD row fine-tunes
the SAME pruned model as ``nc_latency_depth`` (its saved copy, branches removed, loads back from the signed file)."""

from __future__ import annotations

import copy
from pathlib import Path

import pruning_depth as dp
import pruning_latency as pl
import torch
from pruning_methods import METHODS, Context, PruningBenchConfig
from torch import nn

from netcompress.core import atomic_torch_save
from netcompress.distillation import SoftTargetDistillation
from netcompress.pruning.branch_removal import removable_branches, remove_branches_
from netcompress.pruning.graph_tracing import build_channel_graph


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        Block(8),
        Block(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def test_depth_rows_are_registered_latency_rows_with_the_target_checks() -> None:
    for name in dp.DEPTH_ROWS:
        assert name in METHODS.names() and name in pl.LATENCY_ROWS
    rows = [
        {"method": "unpruned", "acc_after": 0.6785},
        {"method": "nc_latency_depth_kd", "acc_after": 0.6700, "ort_speedup_b64": 2.61, "search_speedup": 2.55,
         "met": True, "search_rounds": 3},
        {"method": "tp_magnitude_at_latency", "acc_after": 0.5925, "ort_speedup_b64": 2.87},
    ]  # fmt: skip
    lines = [line for line in pl.latency_checks(rows, 2.5, lambda r: r["acc_after"]) if line != pl.TP_MISSING]
    assert lines[1] == (
        "nc_latency_depth_kd vs tp_magnitude_at_latency (ORT b64 2.87x): +7.75 points (target >= +1): PASS"
    )
    assert lines[2] == "nc_latency_depth_kd vs unpruned: 0.85 points lower (target <= 1): PASS"


def test_kd_row_fine_tunes_the_saved_pruned_model(tmp_path: Path) -> None:
    base = _net()
    x = torch.randn(2, 3, 8, 8)
    graph = build_channel_graph(base, x)
    branches = list(removable_branches(base, graph, x).values())
    assert [b.owner for b in branches] == ["1", "2"]
    small = remove_branches_(copy.deepcopy(base), branches[:1])
    atomic_torch_save({"model": small, "epochs_used": 0, "info": {"label": "depth row"}, "prune_s": 1.0,
                       "acc_before": 0.5, "rng": None}, tmp_path / "nc_latency_depth.pruned.pt", sign=True)  # fmt: skip
    ctx = Context(None, None, PruningBenchConfig(), None, None, x, 0, tmp_path)
    pruned = METHODS.get("nc_latency_depth_kd")(base, ctx)
    assert pruned.info["widths_from"] == "nc_latency_depth.pruned.pt (the row's model)"
    assert pruned.info["label"] == "depth row + KD from the unpruned model (T 4, alpha 0.5)"
    with torch.no_grad():  # the removed-branch model came back whole from the signed file
        torch.testing.assert_close(pruned.model(x), small(x), rtol=0, atol=0)
    assert not hasattr(pruned.model[1], "conv1") and hasattr(pruned.model[2], "conv1")
    (kd,) = pruned.hooks
    assert isinstance(kd, SoftTargetDistillation) and kd.alpha == 0.5 and kd.temperature == 4.0
