"""The latency search's steadier checks (issue 18, session 14): median of interleaved rounds, fill-up, finalists.

A fake clock replaces both timers: the cost table's (``latency_table.time_deployed``, exact: 4 ms + 5 ms per
output channel of ``a`` and ``b``) and the end-to-end checks' (``latency_confirm.time_deployed_rounds``: the
unpruned model exact in every round, each candidate times the next scripted factor, times a scripted load per
round). No wall-clock time is read.
"""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.pruning import latency_confirm, latency_table
from netcompress.pruning.auto import AutoPruneConfig, prune_to_target

from .conftest import TwoBranch

X = torch.randn(2, 3, 8, 8)
WIDTHS = [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25]  # 16 / 14 / 12 / 10 / 8 / 6 / 4 channels
UNPRUNED_MS = 4.0 + 5.0 * 32


def _ms(model: nn.Module) -> float:
    return 4.0 + 5.0 * (model.a.out_channels + model.b.out_channels)


class RoundClock:
    def __init__(self, factors: list[float], loads: list[list[float]] | None = None) -> None:
        self.factors, self.loads, self.checks = list(factors), list(loads or []), []

    def table(self, models, example_inputs, spec) -> dict[str, float]:
        return {name: _ms(m) for name, m in models.items()}

    def rounds(self, models, example_inputs, spec) -> dict[str, list[float]]:
        out, call = {}, []
        for name, m in models.items():
            if name == "unpruned":
                out[name] = [_ms(m)] * spec.rounds
                continue
            factor = self.factors.pop(0) if self.factors else 1.0
            loads = self.loads.pop(0) if self.loads else [1.0] * spec.rounds
            out[name] = [_ms(m) * factor * load for load in loads]
            call.append((m.a.out_channels, m.b.out_channels))
        self.checks.append(call)
        return out


def _search(monkeypatch, tmp_path, clock: RoundClock, **kwargs):
    monkeypatch.setattr(latency_table, "time_deployed", clock.table)
    monkeypatch.setattr(latency_confirm, "time_deployed_rounds", clock.rounds)
    options = {"reduction": 2.0, "tolerance": 0.45, "max_rounds": 4, "confirm_rounds": 5, **kwargs}
    _, summary = prune_to_target(
        TwoBranch().eval(), X, target="latency", runtime="torch", widths=WIDTHS, round_to=1,
        ignore=["a2", "b2"], cache_dir=tmp_path, **options,
    )  # fmt: skip
    return summary


def test_a_check_is_the_median_of_its_rounds_and_reports_their_spread(monkeypatch, tmp_path) -> None:
    # round 1 (a 6, b 8: 74 ms, 2.216x) timed in 5 rounds, two of them 1.5x / 1.6x slow under load: the
    # median ratio is the unloaded one and the target is met at once (one slow timing would have missed it)
    clock = RoundClock([], loads=[[1.0, 1.5, 1.0, 1.6, 1.0]])
    summary = _search(monkeypatch, tmp_path, clock, tolerance=0.15)
    assert clock.checks == [[(6, 8)]]
    (row,) = summary["candidates"]
    ratio = UNPRUNED_MS / 74.0
    assert row["ratios"] == pytest.approx([ratio, ratio / 1.5, ratio, ratio / 1.6, ratio], abs=1e-4)
    assert row["timings"] == 5 and row["reduction"] == pytest.approx(ratio)
    assert row["spread"] == pytest.approx((ratio - ratio / 1.6) / ratio, abs=1e-4)
    assert row["measured"] == pytest.approx(74.0) and row["macs"] > 0
    assert summary["met"] is True and summary["achieved_reduction"] == pytest.approx(ratio)
    assert summary["confirmation"] is None  # no fill-up or finalists asked


def test_fill_up_widens_a_met_model_back_toward_the_target(monkeypatch, tmp_path) -> None:
    # every candidate runs 0.8x the table's cost: round 1 (a 6, b 8) measures 2.77x for 2x, met within the
    # 45 % tolerance, so the search stops there. Fill-up then widens one group (2 channels, +10 ms predicted)
    # per step while 0.8 * (4 + 5 * channels) <= 82 ms: 16 and 18 channels hold, 20 (either group) does not
    clock = RoundClock([0.8] * 10)
    summary = _search(monkeypatch, tmp_path, clock, fill_up=6)
    rows = summary["candidates"]
    assert [r["phase"] for r in rows] == ["search"] + ["fill_up"] * 4
    sums = [sum(c) for (c,) in clock.checks]
    assert sums == [14, 16, 18, 20, 20]  # two widenings held, then both groups' next width missed
    assert [r["reduction"] >= 2.0 for r in rows] == [True, True, True, False, False]
    assert rows[2]["proxy_lost"] < rows[1]["proxy_lost"] < rows[0]["proxy_lost"]
    assert rows[2]["macs"] > rows[1]["macs"] > rows[0]["macs"]
    assert summary["chosen_round"] == 3 and summary["met"] is True
    assert summary["achieved_reduction"] == pytest.approx(UNPRUNED_MS / (0.8 * 94.0))
    kept = {r["layers"][0]: r["kept"] for r in summary["rates"]}
    assert kept["a"] + kept["b"] == 18


def test_fill_up_slack_keeps_a_widening_measured_just_under_the_target(monkeypatch, tmp_path) -> None:
    # as above, with fill_up_slack 0.02: a widening is kept from 1.96x on. 20 channels (0.8 * 104 = 83.2 ms,
    # 1.971x) now holds; 22 (91.2 ms, 1.798x) misses in either group
    clock = RoundClock([0.8] * 10)
    summary = _search(monkeypatch, tmp_path, clock, fill_up=6, fill_up_slack=0.02)
    rows = summary["candidates"]
    assert [sum(c) for (c,) in clock.checks] == [14, 16, 18, 20, 22, 22]
    assert [r["held"] for r in rows[1:]] == [True, True, True, False, False]
    assert summary["chosen_round"] == 4
    assert summary["achieved_reduction"] == pytest.approx(UNPRUNED_MS / (0.8 * 104.0))
    kept = {r["layers"][0]: r["kept"] for r in summary["rates"]}
    assert kept["a"] + kept["b"] == 20


def test_finalists_are_retimed_together_and_the_best_within_tolerance_is_kept(monkeypatch, tmp_path) -> None:
    # as above, then the two best met candidates (18 and 16 channels) are timed again in one interleaved call:
    # the 18-channel one now measures 1.3x slow (1.34x: out), the 16-channel one holds (2.44x): it is returned
    clock = RoundClock([0.8] * 5 + [1.3, 0.8])
    summary = _search(monkeypatch, tmp_path, clock, fill_up=6, finalists=2)
    assert [sum(c) for c in clock.checks[-1]] == [18, 16]  # one call, best proxy first
    final = summary["confirmation"]
    assert [f["round"] for f in final["finalists"]] == [3, 2]
    assert [f["met"] for f in final["finalists"]] == [False, True]
    assert final["finalists"][0]["ratio"] == pytest.approx(UNPRUNED_MS / (1.3 * 94.0))
    assert all(f["timings"] == 5 for f in final["finalists"])
    assert summary["chosen_round"] == 2 and final["chosen_round"] == 2 and summary["met"] is True
    assert summary["achieved_reduction"] == pytest.approx(UNPRUNED_MS / (0.8 * 84.0))
    assert summary["target_after"] == pytest.approx(0.8 * 84.0)
    kept = {r["layers"][0]: r["kept"] for r in summary["rates"]}
    assert kept["a"] + kept["b"] == 16


def test_no_finalist_within_tolerance_returns_the_fastest_with_the_reason(monkeypatch, tmp_path) -> None:
    # re-timed 1.3x and 1.5x slow: 1.34x and 1.30x, neither within 45 % of 2x; the faster (18 channels) is kept
    clock = RoundClock([0.8] * 5 + [1.3, 1.5])
    summary = _search(monkeypatch, tmp_path, clock, fill_up=6, finalists=2)
    assert [f["met"] for f in summary["confirmation"]["finalists"]] == [False, False]
    assert summary["met"] is False and summary["chosen_round"] == 3
    assert summary["achieved_reduction"] == pytest.approx(UNPRUNED_MS / (1.3 * 94.0))
    assert summary["reason"] == (
        "no finalist re-timed within the tolerance of 2.0x lower latency; the fastest re-timed is 1.34x"
    )


def test_retime_takes_per_round_ratios_against_the_same_rounds(monkeypatch) -> None:
    def rounds(models, example_inputs, spec):
        assert spec.rounds == 3
        return {"unpruned": [10.0, 20.0, 10.0], "x": [5.0, 5.0, 4.0], "y": [10.0, 10.0, 10.0]}

    monkeypatch.setattr(latency_confirm, "time_deployed_rounds", rounds)
    spec = latency_table.MeasureSpec(target="latency", runtime="torch", batch_size=4, rounds=7)
    out = latency_confirm.retime(nn.Identity(), {"x": nn.Identity(), "y": nn.Identity()}, X, spec, 3)
    assert out["x"]["ratios"] == [2.0, 4.0, 2.5] and out["x"]["ratio"] == 2.5
    assert out["y"]["ratios"] == [1.0, 2.0, 1.0] and out["y"]["ratio"] == 1.0 and out["y"]["spread"] == 1.0
    assert out["x"]["unpruned"] == statistics.median([10.0, 20.0, 10.0]) == 10.0
    assert out["x"]["candidate"] == pytest.approx(4.0) and out["x"]["timings"] == 3


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"confirm_rounds": 0}, "confirm_rounds=0"),
        ({"fill_up": -1}, "fill_up=-1"),
        ({"finalists": -2}, "finalists=-2"),
        ({"fill_up_slack": 0.05, "tolerance": 0.03}, "fill_up_slack=0.05"),
    ],
)
def test_bad_confirmation_fields_are_errors_naming_them(fields, message) -> None:
    with pytest.raises(ConfigError, match=message):
        AutoPruneConfig.from_dict({"target": "latency", **fields})
