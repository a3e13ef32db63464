"""The one latency timer: warm heap, warm-up, interleaved rounds, p50/p95 and spread.

How a timing is taken (the lessons of the benchmarks, for every caller):

- **Warm heap** (:func:`keep_heap_warm`): large activations are served from a heap that is kept,
  so a timing measures compute, not page faults that depend on the process's history.
- **Warm-up**: ``warmup`` untimed forwards before each round's timed ones (a round switches model
  or batch size, so caches and allocator pools refill first).
- **Interleaved rounds** (:func:`time_rounds`): every model and batch size is timed a few forwards
  at a time, round after round in a rotated order, so load drift on a shared machine hits all of
  them alike instead of whichever happened to run last.
- **One runtime at a time**: several ONNX Runtime sessions timed in turn in one process are timed
  without spinning (a model with ``without_spinning()``, e.g. ``OrtModel``, is swapped for that
  copy): a session's idle threads otherwise spin on the cores the next session needs.
- **Summary** (:func:`latency_summary`): ``p50_ms`` is the median of the rounds' medians (one round
  hit by load moves it little), ``p95_ms`` the 95th percentile of all timed forwards, and ``spread``
  the relative width of the middle 90 % of them, ``(p95 - p5) / p50`` (0 when every forward took
  the same time): report it next to a speed-up so a reader sees how noisy the machine was.

Each forward is timed whole with ``time.perf_counter`` under ``torch.inference_mode``, in eval mode,
which is restored afterwards. CUDA kernels run asynchronously, so when the model or its inputs live on
a GPU every CUDA device they use is synchronised after the warm-up and after each timed forward
(:func:`cuda_devices`); every summary names where it was timed (``device``: ``"cpu, 2 threads"``,
``"cuda:0 NVIDIA H200"``, :func:`describe_device`).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.inputs import batch_size_of, call_model, input_tensors, move_inputs
from netcompress.evaluation.harness import eval_mode, expand_batch, model_device, model_inputs

# glibc mallopt parameters: M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache  # once per process: the setting holds until exit
def keep_heap_warm() -> bool:
    """Serve large tensors from the heap and keep it, so timings measure compute, not page faults.

    glibc hands a block of over 128 KiB to ``mmap`` and returns it on free until a process has freed
    a big one (then it raises the threshold itself). So the same ResNet-20 timed at batch 64 (4 MiB
    activation maps) took 48 ms in a process that had already evaluated a model and 72-75 ms in a fresh
    one, where every forward page-faults its activations back in; the smaller pruned model lost less,
    so its speed-up moved from 2.1x to 2.5x with the process history. Setting the thresholds (mmap at its
    32 MiB maximum, trimming at 1 GiB) gives every timing the steady state of a long-running process.
    Returns False where there is no glibc (the timings then keep the allocator's defaults).

    Example:
        >>> keep_heap_warm() in (True, False)
        True
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        trim_set = libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024 * 1024)
    except (OSError, AttributeError):
        return False
    return bool(mmap_set and trim_set)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on ``threads`` torch threads (None: leave the count), then restore the caller's.

    Example:
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads} must be >= 1")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def latency_summary(
    times_ms: Sequence[float], round_p50s_ms: Sequence[float] | None = None
) -> dict[str, Any]:
    """p50/p95/mean/min/max in ms, ``spread`` and ``repeats`` of timed forwards.

    ``p50_ms`` is the median of ``round_p50s_ms`` when given (interleaved rounds), else of all
    times; ``spread`` is ``(p95 - p5) / p50`` over all times (>= 0; 0 when all are equal).

    Example:
        >>> latency_summary([1.0, 2.0, 3.0])["p50_ms"]
        2.0
    """
    if not times_ms:
        raise ConfigError("latency_summary needs at least one timed forward")
    values = np.asarray(times_ms, dtype=np.float64)
    p5, p50, p95 = (float(v) for v in np.percentile(values, [5, 50, 95]))
    if round_p50s_ms:
        p50 = float(statistics.median(round_p50s_ms))
    return {
        "p50_ms": p50,
        "p95_ms": p95,
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
        "spread": (p95 - p5) / p50 if p50 > 0 else 0.0,
        "repeats": len(times_ms),
        "rounds": len(round_p50s_ms) if round_p50s_ms else 1,
    }


def cuda_devices(model: nn.Module, inputs: Any = None) -> list[torch.device]:
    """The CUDA devices holding the model's parameters or buffers or the input tensors (in order).

    A forward on any of them runs asynchronously: timing it needs ``torch.cuda.synchronize`` on each.

    Example:
        >>> cuda_devices(nn.Linear(2, 2), torch.zeros(1, 2))   # on the CPU
        []
    """
    found: list[torch.device] = []
    tensors = [*model.parameters(), *model.buffers()]
    if inputs is not None:
        tensors += list(input_tensors(inputs))
    for tensor in tensors:
        if tensor.device.type == "cuda" and tensor.device not in found:
            found.append(tensor.device)
    return found


def describe_device(model: nn.Module, inputs: Any = None) -> str:
    """Where a timing runs, for its summary: ``"cpu, 2 threads"`` (torch's thread count now) or
    ``"cuda:0 NVIDIA H200"`` (the first CUDA device of the model or the inputs, with its name).

    Example:
        >>> with torch_threads(2):
        ...     describe_device(nn.Linear(2, 2))
        'cpu, 2 threads'
    """
    devices = cuda_devices(model, inputs)
    if devices:
        return f"{devices[0]} {torch.cuda.get_device_name(devices[0])}"
    device = model_device(model)
    if device.type != "cpu":  # mps, xpu, ...: named as torch names them
        return str(device)
    threads = torch.get_num_threads()
    return f"cpu, {threads} thread{'' if threads == 1 else 's'}"


def _sync(devices: Sequence[torch.device]) -> None:
    for device in devices:
        torch.cuda.synchronize(device)


def _timed_forwards(
    model: nn.Module, inputs: Any, *, warmup: int, repeats: int, max_seconds: float | None
) -> list[float]:
    """``warmup`` untimed then up to ``repeats`` timed forwards (at least one); the caller holds the modes.

    On CUDA the queued work is waited for before the clock starts and before it is read."""
    devices = cuda_devices(model, inputs)
    for _ in range(warmup):
        call_model(model, inputs)
    _sync(devices)
    times_ms: list[float] = []
    loop_start = time.perf_counter()
    for _ in range(repeats):
        start = time.perf_counter()
        call_model(model, inputs)
        _sync(devices)
        times_ms.append((time.perf_counter() - start) * 1000.0)
        if max_seconds is not None and time.perf_counter() - loop_start > max_seconds:
            break
    return times_ms


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` counts differing by at most one (the first ones larger)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _quiet(model: nn.Module) -> nn.Module:
    """``model.without_spinning()`` where the model offers it (an ONNX Runtime session), else ``model``."""
    quiet = getattr(model, "without_spinning", None)
    return quiet() if callable(quiet) else model


def time_rounds(
    models: Mapping[str, nn.Module],
    example_inputs: Any,
    *,
    batch_sizes: Sequence[int] | None = (1,),
    rounds: int = 3,
    repeats: int | Mapping[int, int] = 30,
    warmup: int = 5,
    max_seconds: float | None = None,
    threads: int | None = None,
) -> dict[str, dict[int, dict[str, Any]]]:
    """Time every model at every batch size in interleaved rounds; ``{name: {batch: summary}}``.

    ``repeats`` (or ``repeats[batch]``) is the total number of timed forwards per model and batch
    size, split evenly over ``rounds`` (at most one round per forward). Each round visits the models
    in a rotated order and, for each, every batch size: ``warmup`` untimed forwards, then that round's
    timed ones. A batch of N repeats the first sample N times (``batch_sizes=None`` times the inputs
    as given, under their own batch size). ``max_seconds`` caps the timed forwards of one model and
    batch size over all rounds (each round gets its share; the first round times at least one
    forward, later rounds are skipped once the cap is spent). The heap is kept
    warm (:func:`keep_heap_warm`); ``threads`` sets torch's thread count for the timing only.
    Every summary is :func:`latency_summary` plus ``round_p50_ms`` (each round's median) and
    ``device`` (:func:`describe_device`; on CUDA each forward is synchronised before it is read).

    Example:
        >>> t = time_rounds({"a": nn.Linear(8, 2)}, torch.randn(1, 8), batch_sizes=(1, 64), repeats=6)
        >>> t["a"][64]["p50_ms"] <= t["a"][64]["p95_ms"]
        True
    """
    if warmup < 0:
        raise ConfigError(f"warmup={warmup} must be >= 0")
    if rounds < 1:
        raise ConfigError(f"rounds={rounds} must be >= 1")
    given = model_inputs(example_inputs)
    sizes = [batch_size_of(given)] if batch_sizes is None else [int(b) for b in batch_sizes]
    if any(b < 1 for b in sizes):
        raise ConfigError(f"batch_sizes={list(sizes)} must all be >= 1")
    totals = {b: repeats if isinstance(repeats, int) else int(repeats[b]) for b in sizes}
    if any(n < 1 for n in totals.values()):
        raise ConfigError(f"repeats={repeats} must be >= 1")
    keep_heap_warm()
    names = list(models)
    if len(names) > 1:  # spinning runtimes would steal each other's cores: time them quietly
        models = {name: _quiet(model) for name, model in models.items()}
    inputs = {
        (name, b): move_inputs(
            given if batch_sizes is None else expand_batch(given, b), model_device(models[name])
        )
        for name in names
        for b in sizes
    }
    plan = {b: _split(n, min(rounds, n)) for b, n in totals.items()}
    samples = {(name, b): [] for name in names for b in sizes}
    round_p50s: dict[tuple[str, int], list[float]] = {key: [] for key in samples}
    with torch_threads(threads), contextlib.ExitStack() as stack:
        where = {name: describe_device(models[name], inputs[name, sizes[0]]) for name in names}
        for model in models.values():
            stack.enter_context(eval_mode(model))
        stack.enter_context(torch.inference_mode())
        for index in range(rounds):
            shift = index % max(len(names), 1)
            for name in names[shift:] + names[:shift]:
                for b in sizes:
                    spent_s = sum(samples[name, b]) / 1000.0
                    if index >= len(plan[b]) or (max_seconds is not None and index and spent_s > max_seconds):
                        continue  # planned rounds done, or the time cap spent: no more rounds
                    budget = None if max_seconds is None else max_seconds / len(plan[b])
                    times = _timed_forwards(
                        models[name],
                        inputs[name, b],
                        warmup=warmup,
                        repeats=plan[b][index],
                        max_seconds=budget,
                    )
                    samples[name, b].extend(times)
                    round_p50s[name, b].append(float(np.percentile(times, 50)))
    return {
        name: {
            b: {
                **latency_summary(samples[name, b], round_p50s[name, b]),
                "round_p50_ms": round_p50s[name, b],
                "device": where[name],
            }
            for b in sizes
        }
        for name in names
    }


def time_forward(
    model: nn.Module,
    example_inputs: Any,
    *,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float | None = 10.0,
    rounds: int = 1,
) -> dict[str, Any]:
    """Time ``repeats`` forwards of ``model`` on ``example_inputs`` as given (see :func:`time_rounds`).

    ``max_seconds`` caps the timed loop: a slow model stops early (at least one timed run), and
    ``repeats`` in the result says how many runs the percentiles are over.

    Example:
        >>> time_forward(nn.Linear(64, 10), torch.randn(1, 64), repeats=10)["p50_ms"]
        0.01...
    """
    if repeats < 1:
        raise ConfigError(f"repeats={repeats} must be >= 1")
    timing = time_rounds(
        {"model": model},
        example_inputs,
        batch_sizes=None,
        rounds=rounds,
        repeats=repeats,
        warmup=warmup,
        max_seconds=max_seconds,
    )
    return next(iter(timing["model"].values()))


def time_alternating(
    models: Mapping[str, nn.Module],
    example: torch.Tensor,
    *,
    batch_sizes: Sequence[int] = (1, 64),
    rounds: int = 5,
    repeats: Mapping[int, int] | None = None,
    threads: int = 1,
) -> dict[str, dict[str, Any]]:
    """Latency of several models to compare, as a table row each: :func:`time_rounds` with 2 warm-ups.

    ``repeats[batch]`` timed forwards per round (default 20 at batch 1, 5 at others). Each row has
    ``latency_ms`` / ``latency_b<N>_ms`` (median over rounds), ``..._p95_ms`` and ``..._spread``
    for each batch size, plus ``rounds``, ``threads`` and ``device``.

    Example:
        >>> t = time_alternating({"a": nn.Linear(8, 2)}, torch.randn(1, 8), rounds=2)
        >>> t["a"]["latency_ms"] <= t["a"]["latency_p95_ms"]
        True
    """
    per_round = {1: 20, **{b: 5 for b in batch_sizes if b != 1}, **dict(repeats or {})}
    timing = time_rounds(
        models,
        example,
        batch_sizes=batch_sizes,
        rounds=rounds,
        repeats={b: per_round[b] * rounds for b in batch_sizes},
        warmup=2,
        threads=threads,
    )
    out: dict[str, dict[str, Any]] = {}
    for name, per_batch in timing.items():
        row: dict[str, Any] = {"rounds": rounds, "threads": threads}
        for b, summary in per_batch.items():
            row["device"] = summary["device"]
            prefix = "latency" if b == 1 else f"latency_b{b}"
            row[f"{prefix}_ms"] = summary["p50_ms"]
            row[f"{prefix}_p95_ms"] = summary["p95_ms"]
            row[f"{prefix}_spread"] = summary["spread"]
        out[name] = row
    return out
