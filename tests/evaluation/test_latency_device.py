"""Latency on a GPU: CUDA forwards are synchronised before the clock is read, and every summary names
the device. No GPU is needed: the CUDA calls are replaced by recorders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.evaluation import latency, profile
from netcompress.evaluation.latency import (
    cuda_devices,
    describe_device,
    time_forward,
    time_rounds,
    torch_threads,
)


class Recorded(nn.Module):
    """A model that logs each forward into the shared event list."""

    def __init__(self, events: list) -> None:
        super().__init__()
        self.events = events
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.events.append("forward")
        return self.linear(x)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend the model lives on cuda:0: record synchronize calls, name the GPU."""
    events: list = []
    monkeypatch.setattr(latency, "cuda_devices", lambda model, inputs=None: [torch.device("cuda", 0)])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(f"sync {device}"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 80GB")
    return events


def test_every_timed_cuda_forward_is_synchronised_before_the_clock_is_read(fake_gpu):
    clock: list = []
    real = latency.time.perf_counter

    def perf_counter() -> float:
        fake_gpu.append("clock")
        clock.append(real())
        return clock[-1]

    model = Recorded(fake_gpu)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(latency.time, "perf_counter", perf_counter)
        timing = time_forward(model, torch.randn(1, 4), warmup=2, repeats=3, max_seconds=None)
    timed = ["clock", "forward", "sync cuda:0", "clock"]
    assert fake_gpu == ["forward", "forward", "sync cuda:0", "clock", *timed * 3]
    assert timing["repeats"] == 3 and timing["device"] == "cuda:0 Fake GPU 80GB"


def test_profile_and_rounds_report_the_gpu(fake_gpu):
    stats = profile(nn.Linear(4, 2), torch.randn(1, 4), batch_sizes=(1, 2), repeats=2, rounds=1, memory=False)
    assert stats["latency_device"] == "cuda:0 Fake GPU 80GB"
    assert fake_gpu.count("sync cuda:0") == 2 * (1 + 2)  # per batch size: after the warm-up and each forward
    assert time_rounds({"m": nn.Linear(4, 2)}, torch.randn(1, 4), repeats=1)["m"][1]["device"].startswith(
        "cuda:0"
    )


def test_cpu_timing_never_touches_cuda_and_names_its_threads(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("torch.cuda called for a CPU model")

    monkeypatch.setattr(torch.cuda, "synchronize", no_cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", no_cuda)
    model, x = nn.Linear(4, 2), torch.randn(1, 4)
    assert cuda_devices(model, x) == [] and cuda_devices(model, {"x": x, "n": 3}) == []
    with torch_threads(2):
        assert describe_device(model, x) == "cpu, 2 threads"
    with torch_threads(3):
        assert time_forward(model, x, warmup=1, repeats=2)["device"] == "cpu, 3 threads"
    stats = profile(model, x, batch_sizes=(1,), repeats=2, rounds=1, threads=1, memory=False)
    assert stats["latency_device"] == "cpu, 1 thread"
    assert profile(model, x, latency=False, memory=False)["latency_device"] is None
