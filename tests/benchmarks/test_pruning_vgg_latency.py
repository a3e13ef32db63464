"""Session 14's narrow-VGG latency row: registered as a latency row, it runs the shared sensitivity search with
the confirmation switches on and carries every check and the finalists' re-timing into its info."""

from __future__ import annotations

import pruning_latency as pl
import pruning_vgg_latency as vl
from pruning_methods import METHODS, Context, Pruned, PruningBenchConfig
from torch import nn


def test_row_is_a_latency_row_with_the_confirmation_switches(monkeypatch, tmp_path) -> None:
    assert vl.VGG_LATENCY_ROWS == (
        "nc_latency_fill",
        "nc_latency_fill_fine",
        "tp_magnitude_at_latency_median",
        "nc_latency_fill_slack",
        "nc_latency_fill_depth_c2",
        "nc_latency_fill_idle",
    )
    assert "nc_latency_fill" in METHODS.names() and "nc_latency_fill" in pl.LATENCY_ROWS
    calls = []
    checks = [{"round": 1, "phase": "search", "reduction": 2.9, "ratios": [2.8, 2.9, 3.0], "spread": 0.069,
               "timings": 3, "macs": 1e6, "met": True, "overshoot": True, "scale": 1.0},
              {"round": 2, "phase": "fill_up", "reduction": 2.52, "held": True, "met": True}]  # fmt: skip
    summary = {"candidates": checks, "confirmation": {"chosen_round": 2}, "chosen_round": 2, "rates": [],
               "cost_table": {"base": 40.0}}  # fmt: skip

    def search(base, ctx, row, label, **options):
        calls.append((row, label, options))
        return nn.Identity(), summary, {"label": f"netcompress latency target 2.5x (ORT b64), {label}"}

    monkeypatch.setattr(vl, "latency_search", search)
    monkeypatch.setattr(vl, "with_recalibration", lambda pruned, ctx: pruned)
    ctx = Context(None, None, PruningBenchConfig(), None, None, None, 0, tmp_path)
    pruned = METHODS.get("nc_latency_fill")(nn.Identity(), ctx)
    ((row, label, options),) = calls
    assert row == "nc_latency_fill"
    assert options == {"confirm_rounds": 7, "fill_up": 12, "finalists": 4, "max_rounds": 6}
    assert isinstance(pruned, Pruned) and pruned.info["chosen_round"] == 2
    assert pruned.info["candidates"][0] == {
        k: v for k, v in checks[0].items() if k not in ("overshoot", "scale")
    }
    assert pruned.info["candidates"][1]["held"] is True and pruned.info["table_base"] == 40.0
    assert "median of 7 rounds per check, fill-up, 4 finalists re-timed" in label


def test_slack_row_keeps_widenings_from_097_of_the_target(monkeypatch, tmp_path) -> None:
    calls = []
    summary = {"candidates": [], "confirmation": None, "chosen_round": 1, "rates": [], "cost_table": {"base": 1.0}}

    def search(base, ctx, row, label, **options):
        calls.append((row, label, options))
        return nn.Identity(), summary, {"label": label}

    monkeypatch.setattr(vl, "latency_search", search)
    monkeypatch.setattr(vl, "with_recalibration", lambda pruned, ctx: pruned)
    ctx = Context(None, None, PruningBenchConfig(), None, None, None, 0, tmp_path)
    METHODS.get("nc_latency_fill_slack")(nn.Identity(), ctx)
    ((row, label, options),) = calls
    assert row == "nc_latency_fill_slack" and "fill-up kept from 0.97 x the target" in label
    assert options == {"confirm_rounds": 7, "fill_up": 12, "finalists": 4, "max_rounds": 6, "fill_up_slack": 0.03}
