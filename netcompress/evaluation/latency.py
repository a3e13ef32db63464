"""CPU (or GPU) latency of a forward pass: warm-up, repeated timing, percentiles.

Each repeat times one whole forward with ``time.perf_counter`` under ``torch.inference_mode``
(on CUDA the device is synchronised around it). The median (p50) is the headline number
because the first calls and the odd scheduler hiccup on a shared machine make the mean drift.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.evaluation.harness import as_input_tuple, eval_mode, model_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(
    model: nn.Module,
    example_inputs: Any,
    *,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float | None = 10.0,
) -> dict[str, Any]:
    """Time ``repeats`` forwards after ``warmup`` untimed ones; returns p50/p95/mean in ms.

    ``max_seconds`` caps the timed loop: a slow model stops early (at least one timed run),
    and ``repeats`` in the result says how many runs the percentiles are over.

    Example:
        >>> time_forward(nn.Linear(64, 10), torch.randn(1, 64), repeats=10)["p50_ms"]
        0.01...
    """
    if warmup < 0:
        raise ConfigError(f"warmup={warmup} must be >= 0")
    if repeats < 1:
        raise ConfigError(f"repeats={repeats} must be >= 1")
    device = model_device(model)
    args = tuple(t.to(device) for t in as_input_tuple(example_inputs))
    times_ms: list[float] = []
    with eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(*args)
        _sync(device)
        loop_start = time.perf_counter()
        for _ in range(repeats):
            start = time.perf_counter()
            model(*args)
            _sync(device)
            times_ms.append((time.perf_counter() - start) * 1000.0)
            if max_seconds is not None and time.perf_counter() - loop_start > max_seconds:
                break
    values = np.asarray(times_ms)
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "repeats": len(times_ms),
    }
