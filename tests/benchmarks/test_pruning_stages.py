"""The session-9 8x rows: registered, kept out of the MAC-budget checks, the bound lines, and the
allocation search's budget fit and choice on a tiny net (no CIFAR-10: the validation batches are given)."""

from __future__ import annotations

from pathlib import Path

import cifar_protocol as cp
import pruning_latency as pl
import pruning_stages as st
import torch
from pruning_methods import METHODS, Context, PruningBenchConfig, macs_of
from torch import nn


def test_rows_are_registered_and_kept_out_of_the_mac_budget_checks() -> None:
    for name in st.STAGES_ROWS:
        assert name in METHODS.names() and name in pl.LATENCY_ROWS


def test_bound_rows_are_reported_against_torch_pruning_without_a_target() -> None:
    rows = [
        {"method": "unpruned", "acc_after": 0.7366},
        {"method": "nc_macs_high_search", "acc_after": 0.7001, "mac_reduction": 8.03},
        {"method": "tp_magnitude_macs_high", "acc_after": 0.6946, "mac_reduction": 8.00},
        {"method": "scratch_macs_high", "acc_after": 0.7050, "mac_reduction": 8.00},
    ]
    lines = [line for line in pl.latency_checks(rows, 2.5, lambda r: r["acc_after"]) if line != pl.TP_MISSING]
    assert lines == [
        "nc_macs_high_search: 8.03x fewer MACs (target 8x within 2 %: PASS); vs tp_magnitude_macs_high "
        "(8.00x): +0.55 points (target >= +2): MISS",
        "(bound, not a target) scratch_macs_high (8.00x fewer MACs): +1.04 points over tp_magnitude_macs_high",
    ]


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


def _ctx(tmp_path: Path, batches: list) -> Context:
    config = PruningBenchConfig(high_mac_reduction=4.0)
    return Context(None, cp.PROTOCOLS["quick"], config, batches, None, torch.randn(1, 3, 8, 8), 0, tmp_path)


def test_allocation_search_fits_the_mac_budget_and_keeps_the_best_proxy(tmp_path, monkeypatch) -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(2)
    ]
    base, ctx = _net(), _ctx(tmp_path, batches)
    search = st.AllocationSearch(base, ctx, val=batches)
    assert [g.producers for g in search.groups] == [["0"], ["3"]]  # never the classifier's outputs
    budget = macs_of(base, ctx.example) / 4.0
    keeps = search.fit_budget([1.0, 0.5])
    model = search.build(keeps)
    assert search.macs(keeps) == macs_of(model, ctx.example) <= budget  # counted from the plan, exactly
    assert [model[0].out_channels, model[3].out_channels] == keeps
    # no single channel more fits: the budget is filled
    assert search.macs([keeps[0] + 1, keeps[1]]) > budget and search.macs([keeps[0], keeps[1] + 1]) > budget
    assert keeps[1] / 32 < keeps[0] / 16  # the shape: the second group keeps the smaller share
    monkeypatch.setattr(st, "SEARCH_RANDOM", 4)
    monkeypatch.setattr(st, "SEARCH_MUTATIONS", 2)
    best, found = search.run()
    tried = found["tried"]
    assert [t["kind"] for t in tried] == ["uniform", "random", "random", "random", "mutation", "mutation"]
    assert tried[0]["shape"] == [1.0, 1.0] and found["uniform_val_acc"] == tried[0]["val_acc"]
    assert found["best_val_acc"] == max(t["val_acc"] for t in tried)
    assert all(t["mac_reduction"] >= 4.0 for t in tried) and macs_of(best, ctx.example) <= budget
    assert [best[0].out_channels, best[3].out_channels] == max(tried, key=lambda t: t["val_acc"])["keeps"]
    assert best[-1].out_features == 10


def test_partial_epochs_carry_on_where_the_last_slice_stopped() -> None:
    part = st.PartialEpoch([0, 1, 2, 3, 4], 3)
    assert len(part) == 3 and [list(part) for _ in range(3)] == [[0, 1, 2], [3, 4, 0], [1, 2, 3]]


def test_latency_bound_row_is_reported_without_a_target() -> None:
    rows = [
        {"method": "unpruned", "acc_after": 0.6785},
        {"method": "tp_magnitude_at_latency", "acc_after": 0.5925, "ort_speedup_b64": 2.41},
        {"method": "nc_latency_sens_long", "acc_after": 0.6705, "ort_speedup_b64": 2.47},
    ]
    lines = [line for line in pl.latency_checks(rows, 2.5, lambda r: r["acc_after"]) if line != pl.TP_MISSING]
    assert lines == [
        "(bound, not a target) nc_latency_sens_long (ORT b64 2.47x): 0.80 points below unpruned, "
        "+7.80 over tp_magnitude_at_latency"
    ]
    rows[-1]["acc_after"] = 0.6938  # the ResNet-20 bound measured in session 10: above the unpruned model
    assert pl.latency_checks(rows, 2.5, lambda r: r["acc_after"])[0] == (
        "(bound, not a target) nc_latency_sens_long (ORT b64 2.47x): 1.53 points above unpruned, "
        "+10.13 over tp_magnitude_at_latency"
    )


def test_latency_bound_fine_tunes_the_latency_rows_kept_pruned_model(tmp_path) -> None:
    from netcompress.core import atomic_torch_save

    saved = _net()
    info = {"label": "netcompress latency target 2.5x", "met": True}
    atomic_torch_save({"model": saved, "epochs_used": 0, "info": info}, tmp_path / "nc_latency_sens.pruned.pt",
                      sign=True)  # fmt: skip
    ctx = _ctx(tmp_path, [])
    pruned = METHODS.get("nc_latency_sens_long")(None, ctx)
    assert pruned.epochs_used == ctx.config.finetune_epochs - st.LONG_EPOCHS  # the harness trains 15 epochs
    for got, want in zip(pruned.model.state_dict().values(), saved.state_dict().values(), strict=True):
        assert torch.equal(got, want)
    assert (
        pruned.info["met"] is True
        and pruned.info["widths_from"] == "nc_latency_sens.pruned.pt (the row's widths)"
    )
    assert (
        pruned.info["label"] == "netcompress latency target 2.5x, fine-tuned 15 epochs (bound: 3x the budget)"
    )
