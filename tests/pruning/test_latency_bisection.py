"""The measured-latency search bisects the table scale between a miss and an overshoot (issue 18).

Under load a measurement can be far off the table: rescaling by it jumped from a miss to an overshoot
and back (1.55x to 5.16x for a 2.5x target). A fake clock replaces the timing
(``latency_table.time_deployed``): the cost table's calls are exact, and each of the search's
end-to-end measurements multiplies the candidate by the next "load" factor. No wall-clock time is read.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from netcompress.pruning import latency_table
from netcompress.pruning.auto import prune_to_target
from netcompress.pruning.latency_table import CostTable
from netcompress.pruning.latency_widths import ScaleBracket, bisect_widths, width_counts

from .conftest import TwoBranch

X = torch.randn(2, 3, 8, 8)
WIDTHS = [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25]


class LoadClock:
    """``4 ms + 5 ms`` per output channel of ``a`` and ``b``; the search's candidates times the next load
    (the end-to-end measurements in the asked runtime; the summary's other form is not loaded)."""

    def __init__(self, loads: list[float]) -> None:
        self.loads, self.candidates = list(loads), []

    @staticmethod
    def ms(model: nn.Module) -> float:
        return 4.0 + sum(5.0 * m.out_channels for n, m in model.named_modules() if n in ("a", "b"))

    def __call__(self, models, example_inputs, spec) -> dict[str, float]:
        out = {name: self.ms(m) for name, m in models.items()}
        if "candidate" in out and spec.runtime == "torch":  # the search's runtime, not the other form's
            self.candidates.append((models["candidate"].a.out_channels, models["candidate"].b.out_channels))
            out["candidate"] *= self.loads.pop(0) if self.loads else 1.0
        return out


def _search(monkeypatch, tmp_path, loads: list[float]):
    clock = LoadClock(loads)
    monkeypatch.setattr(latency_table, "time_deployed", clock)
    _, summary = prune_to_target(
        TwoBranch().eval(), X, target="latency", runtime="torch", reduction=2.0, tolerance=0.05,
        max_rounds=8, widths=WIDTHS, round_to=1, ignore=["a2", "b2"], cache_dir=tmp_path,
    )  # fmt: skip
    return clock, summary


def test_a_miss_then_an_overshoot_bisects_the_scale_instead_of_rescaling(monkeypatch, tmp_path) -> None:
    # unpruned 4 + 80 + 80 = 164 ms; 2x lower = 82 ms. Round 1 (a 6, b 8 channels: 74 ms) is measured 1.3x
    # slow: a miss. The rescaled table then picks a 6, b 4 (54 ms), measured 0.6x: 32.4 ms, an overshoot.
    # Rescaling by that would jump to scale 1.196 (above the miss's 1.0: the old oscillation); the
    # bisection takes sqrt(1.0 * 0.7533) = 0.8679 and a 6, b 6 (64 ms x 1.3 = 83.2: 1.97x, met).
    clock, summary = _search(monkeypatch, tmp_path, [1.3, 0.6, 1.3])
    rounds = summary["candidates"]
    assert clock.candidates == [(6, 8), (6, 4), (6, 6)]
    assert [(r["met"], r["overshoot"], r["bisected"]) for r in rounds] == [
        (False, False, False), (True, True, False), (True, False, True)
    ]  # fmt: skip
    assert [r["measured"] for r in rounds] == pytest.approx([96.2, 32.4, 83.2])
    miss, over = rounds[0]["scale"], rounds[1]["scale"]
    assert miss == 1.0 and over == pytest.approx(0.7533333, abs=1e-6)
    assert rounds[2]["scale"] == pytest.approx(math.sqrt(miss * over)) and over < rounds[2]["scale"] < miss
    assert summary["met"] is True and summary["chosen_round"] == 3
    assert summary["achieved_reduction"] == pytest.approx(164 / 83.2)
    assert summary["bisection"] == {"miss_scale": 1.0, "overshoot_scale": pytest.approx(over)}


def test_no_new_widths_inside_the_bracket_stops_and_keeps_the_met_model_losing_least(
    monkeypatch, tmp_path
) -> None:
    # round 3 (a 6, b 6) also overshoots under the 0.6 load: between it and the miss (a 6, b 8) every
    # middle scale gives one of the measured widths again, so the search stops after 3 of its 8 rounds
    clock, summary = _search(monkeypatch, tmp_path, [1.3, 0.6, 0.6, 0.6, 0.6])
    rounds = summary["candidates"]
    assert clock.candidates == [(6, 8), (6, 4), (6, 6)] and len(rounds) == 3
    assert len({tuple(sorted(r["widths"].items())) for r in rounds}) == 3  # nothing measured twice
    bracket = summary["bisection"]
    assert bracket["overshoot_scale"] < bracket["miss_scale"] < rounds[0]["scale"]
    assert bracket["miss_scale"] / bracket["overshoot_scale"] < 1.001  # halved until nothing new was inside
    met = [r for r in rounds if r["met"]]
    assert summary["met"] is True and summary["reason"] is None
    assert rounds[summary["chosen_round"] - 1]["proxy_lost"] == min(r["proxy_lost"] for r in met)
    assert summary["chosen_round"] == 3  # a 6, b 6 keeps more than a 6, b 4


def test_scale_bracket_records_outcomes_and_halves_geometrically() -> None:
    bracket = ScaleBracket()
    bracket.record(1.0, met=True, overshoot=False)  # met within the tolerance: rules nothing out
    assert not bracket.closed and bracket.to_dict() == {"miss_scale": None, "overshoot_scale": None}
    bracket.record(0.8, met=False, overshoot=False)
    bracket.record(0.9, met=False, overshoot=False)  # a miss at a larger scale says less: 0.8 stays
    bracket.record(0.2, met=True, overshoot=True)
    bracket.record(0.1, met=True, overshoot=True)
    assert bracket.to_dict() == {"miss_scale": 0.8, "overshoot_scale": 0.2} and bracket.closed
    assert bracket.middle() == pytest.approx(0.4) and not bracket.empty
    bracket.record(0.9, met=True, overshoot=True)  # noise: an overshoot above a miss
    assert bracket.empty


def test_an_empty_bracket_gives_no_widths_and_leaves_the_table_alone() -> None:
    table = CostTable(key={}, base=100.0, widths=[1.0, 0.5], kept={"a": [16, 8]}, costs={"a": [100.0, 40.0]})
    bracket = ScaleBracket(miss=0.5, overshoot=0.7)
    assert bisect_widths(bracket, ["a"], table, {"a": [0.0, 1.0]}, 50.0, {}) is None and table.scale == 1.0
    # an open bracket: the middle scale 0.5 predicts 100 - 0.5 * 60 = 70 > 50 at width 0.5, still returned
    bracket = ScaleBracket(miss=1.0, overshoot=0.25)
    assert bisect_widths(bracket, ["a"], table, {"a": [0.0, 1.0]}, 50.0, {}) == {"a": 1}
    assert table.scale == 0.5


def _fine_search(monkeypatch, tmp_path, *, round_to, reduction: float):
    clock = LoadClock([])
    monkeypatch.setattr(latency_table, "time_deployed", clock)
    _, summary = prune_to_target(
        TwoBranch().eval(), X, target="latency", runtime="torch", reduction=reduction, tolerance=0.05,
        max_rounds=8, round_to=round_to, ignore=["a2", "b2"], cache_dir=tmp_path,
    )  # fmt: skip
    kept = {(e["group"], e["kept"]) for e in summary["cost_table"]["entries"]}
    return clock, summary, kept


def test_auto_rounding_gives_small_groups_finer_widths_and_reaches_the_target(monkeypatch, tmp_path) -> None:
    # two 16-channel groups at the default widths 1 / 0.75 / 0.5 / 0.25: multiples of 8 leave 16 or 8 (the
    # narrowest 4 + 40 + 40 = 84 ms: 1.95x of 164, short of 2.5x); "auto" now offers 12 and 4 as well and
    # meets 2.5x at a 8, b 4 (4 + 40 + 20 = 64 ms: 2.5625x, within the 5 % tolerance above)
    clock, summary, kept = _fine_search(monkeypatch, tmp_path / "auto", round_to="auto", reduction=2.5)
    assert kept == {(g, k) for g in "ab" for k in (12, 8, 4)}
    assert clock.candidates == [(8, 4)]
    assert summary["met"] is True and summary["reason"] is None
    assert summary["achieved_reduction"] == pytest.approx(164 / 64)
    # an explicit multiple of 8 is kept as asked: the same target stops with the reason
    clock, summary, kept = _fine_search(monkeypatch, tmp_path / "eight", round_to=8, reduction=2.5)
    assert kept == {(g, k) for g in "ab" for k in (16, 8)} and clock.candidates == [(8, 8)]
    assert summary["met"] is False and "narrowest useful width" in summary["reason"]
    assert summary["achieved_reduction"] == pytest.approx(164 / 84)


def test_a_target_past_the_finest_widths_still_stops_with_the_reason(monkeypatch, tmp_path) -> None:
    # 5x needs 32.8 ms; both groups at 4 channels give 44 ms (3.73x): the best measured, met False
    clock, summary, _ = _fine_search(monkeypatch, tmp_path, round_to="auto", reduction=5.0)
    assert clock.candidates == [(4, 4)] and summary["met"] is False
    assert summary["reason"].startswith(
        "cannot reach 5.0x lower latency: every candidate group is at its narrowest"
    )
    assert "the best measured is 3.73x" in summary["reason"]
    assert summary["achieved_reduction"] == pytest.approx(164 / 44)


@pytest.mark.parametrize(
    ("units", "round_to", "min_channels", "expected"),
    [
        (16, "auto", 1, [16, 12, 8, 4]),  # multiples of 8 repeat at 0.75 and 0.25: multiples of 4 there
        (24, "auto", 1, [24, 20, 16, 8]),  # only 0.75 repeats (24): 20, a multiple of 4
        (32, "auto", 1, [32, 24, 16, 8]),  # multiples of 8 already distinct: unchanged
        (64, "auto", 1, [64, 48, 32, 16]),
        (12, "auto", 1, [12, 9, 6, 3]),  # under 16 channels "auto" is any count already
        (16, "auto", 8, [16, 12, 8, 8]),  # min_channels still holds (a repeat where nothing else fits)
        (16, 8, 1, [16, 16, 8, 8]),  # an explicit multiple is never refined
        (16, 1, 1, [16, 12, 8, 4]),
    ],
)
def test_width_counts(units, round_to, min_channels, expected) -> None:
    widths = [1.0, 0.75, 0.5, 0.25]
    assert width_counts(units, widths, round_to=round_to, min_channels=min_channels) == expected


def test_width_counts_take_the_coarsest_new_multiple() -> None:
    # eighths of 16: each repeat of the multiple-of-8 count takes the coarsest of 4, 2, 1 that is new
    eighths = [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25]
    assert width_counts(16, eighths, round_to="auto", min_channels=1) == [16, 14, 12, 10, 8, 6, 4]
    # 0.7 asks for 12 channels again after 0.75's 12: no multiple gives a new count, the repeat is kept
    assert width_counts(16, [1.0, 0.75, 0.7, 0.5], round_to="auto", min_channels=1) == [16, 12, 12, 8]


def test_a_group_the_table_sees_no_saving_in_is_named_in_the_reason(monkeypatch, tmp_path) -> None:
    # b's width costs nothing here (4 + 5 ms per channel of a, + 80): a alone at 4 channels gives 104 ms
    # (1.58x of 164) and narrowing b is predicted to save nothing, so the search stops with b unpruned
    def clock(models, example_inputs, spec) -> dict[str, float]:
        return {name: 84.0 + 5.0 * m.a.out_channels for name, m in models.items()}

    monkeypatch.setattr(latency_table, "time_deployed", clock)
    _, summary = prune_to_target(
        TwoBranch().eval(), X, target="latency", runtime="torch", reduction=2.5, tolerance=0.05,
        max_rounds=8, round_to="auto", ignore=["a2", "b2"], cache_dir=tmp_path,
    )  # fmt: skip
    assert [r["widths"] for r in summary["candidates"]] == [{"a": 0.25}]
    assert summary["met"] is False and summary["achieved_reduction"] == pytest.approx(164 / 104)
    assert summary["reason"] == (
        "cannot reach 2.5x lower latency: the cost table predicts no further saving from narrowing any group "
        "(1 of 2 at their narrowest width) (widths down to 0.25, min_channels=1); the best measured is 1.58x"
    )
