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


class _Spinner(nn.Linear):
    """Stands in for an ONNX Runtime session: offers a quiet copy and counts who ran."""

    def __init__(self, log: list[str], name: str) -> None:
        super().__init__(4, 2)
        self.log, self.name = log, name

    def without_spinning(self) -> _Spinner:
        return _Spinner(self.log, self.name + " quiet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        return super().forward(x)


def test_several_runtimes_are_timed_without_spinning_one_alone_as_given() -> None:
    log: list[str] = []
    time_rounds(
        {"a": _Spinner(log, "a"), "b": _Spinner(log, "b"), "t": nn.Linear(4, 2)},
        torch.randn(1, 4),
        rounds=2,
        repeats=2,
        warmup=1,
    )
    assert set(log) == {"a quiet", "b quiet"} and len(log) == 2 * (2 + 2)  # 2 rounds x (1 warm-up + 1 timed)
    log.clear()
    time_rounds({"a": _Spinner(log, "a")}, torch.randn(1, 4), rounds=1, repeats=3, warmup=0)
    assert log == ["a", "a", "a"]


def test_ort_model_without_spinning_sets_the_session_entry(tmp_path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from netcompress.export.onnx import OrtModel, export_onnx

    model = nn.Linear(4, 2).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, torch.randn(1, 4))
    spinning, quiet = OrtModel(path), OrtModel(path).without_spinning()
    assert not quiet.spinning and spinning.spinning and quiet.path == spinning.path
    entry = "session.intra_op.allow_spinning"
    assert quiet.session.get_session_options().get_session_config_entry(entry) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        spinning.session.get_session_options().get_session_config_entry(entry)  # not set: ORT's default
    x = torch.randn(3, 4)
    assert torch.allclose(quiet(x), spinning(x))
