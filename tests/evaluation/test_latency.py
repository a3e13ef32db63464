"""The one latency timer: summaries from fixed samples (exact), and the shape of real timings.

Wall-clock values are never asserted, only orderings, counts and keys.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.evaluation import (
    keep_heap_warm,
    latency_summary,
    profile,
    time_alternating,
    time_forward,
    time_rounds,
    torch_threads,
)


def test_latency_summary_of_fixed_samples() -> None:
    times = [float(v) for v in range(1, 21)]  # 1..20 ms
    s = latency_summary(times)
    assert s["p50_ms"] == 10.5
    assert s["p95_ms"] == pytest.approx(19.05)
    assert s["mean_ms"] == 10.5 and s["min_ms"] == 1.0 and s["max_ms"] == 20.0
    assert s["spread"] == pytest.approx((19.05 - 1.95) / 10.5)
    assert s["repeats"] == 20 and s["rounds"] == 1
    assert s["p50_ms"] <= s["p95_ms"]


def test_latency_summary_takes_the_median_of_round_medians() -> None:
    s = latency_summary([1.0, 1.0, 2.0, 2.0, 9.0, 9.0], round_p50s_ms=[1.0, 2.0, 9.0])
    assert s["p50_ms"] == 2.0 and s["rounds"] == 3  # one slow round moves it little
    assert latency_summary([3.0, 3.0])["spread"] == 0.0
    with pytest.raises(ConfigError):
        latency_summary([])


def test_time_rounds_interleaves_and_splits_the_repeats() -> None:
    models = {"small": nn.Linear(8, 2), "big": nn.Sequential(nn.Linear(8, 256), nn.Linear(256, 2))}
    models["big"].train()
    timing = time_rounds(models, torch.randn(1, 8), batch_sizes=(1, 4), rounds=3, repeats=7, warmup=1)
    assert set(timing) == {"small", "big"}
    for per_batch in timing.values():
        assert set(per_batch) == {1, 4}
        for s in per_batch.values():
            assert s["repeats"] == 7 and s["rounds"] == 3 and len(s["round_p50_ms"]) == 3
            assert 0 < s["min_ms"] <= s["p50_ms"] <= s["p95_ms"] <= s["max_ms"]
            assert s["spread"] >= 0
    assert models["big"].training and models["big"][0].training  # eval mode restored


def test_time_rounds_never_runs_more_rounds_than_forwards() -> None:
    timing = time_rounds({"m": nn.Linear(4, 2)}, torch.randn(1, 4), rounds=5, repeats=2, warmup=0)
    assert timing["m"][1]["repeats"] == 2 and timing["m"][1]["rounds"] == 2
    with pytest.raises(ConfigError):
        time_rounds({"m": nn.Linear(4, 2)}, torch.randn(1, 4), rounds=0)


def test_time_forward_keeps_its_keys() -> None:
    t = time_forward(nn.Linear(4, 2), torch.randn(3, 4), warmup=0, repeats=4)
    assert {"p50_ms", "p95_ms", "mean_ms", "min_ms", "repeats", "spread"} <= set(t)
    assert t["repeats"] == 4 and t["p50_ms"] <= t["p95_ms"]


def test_time_alternating_returns_medians_for_every_model():
    models = {"small": nn.Linear(8, 2), "big": nn.Sequential(nn.Linear(8, 256), nn.Linear(256, 2))}
    timings = time_alternating(models, torch.randn(1, 8), rounds=3, repeats={1: 2, 64: 2}, threads=1)
    assert set(timings) == {"small", "big"}
    for row in timings.values():
        assert row["rounds"] == 3 and row["threads"] == 1
        assert 0 < row["latency_ms"] < 1000 and 0 < row["latency_b64_ms"] < 1000
        assert row["latency_ms"] <= row["latency_p95_ms"] and row["latency_spread"] >= 0


def test_profile_reports_spread_rounds_and_the_warm_heap() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    stats = profile(model, torch.randn(1, 16), batch_sizes=(1, 8), warmup=1, repeats=4, rounds=2, threads=1)
    assert stats["latency_repeats"] == {"1": 4, "8": 4} and stats["latency_rounds"] == 2
    assert stats["latency_ms"] <= stats["latency_p95_ms"] and stats["latency_spread"] >= 0
    assert stats["latency_b8_ms"] <= stats["latency_b8_p95_ms"] and stats["latency_b8_spread"] >= 0
    assert stats["heap_kept_warm"] is keep_heap_warm()
    off = profile(model, torch.randn(1, 16), latency=False)
    assert off["latency_spread"] is None and off["latency_rounds"] is None


def test_torch_threads_restores_the_count() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ConfigError), torch_threads(0):
        pass
