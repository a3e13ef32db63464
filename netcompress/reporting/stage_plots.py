"""The stage bars of a run: accuracy, size and latency per stage, legible at any spread of values.

A panel whose values span more than :data:`LOG_FROM_DECADES` decades (a 100 kB model against an
11 kB ONNX file is one; a latency of 100 ms against 0.1 ms three) is drawn on a log axis, so no bar
shrinks to nothing and none dwarfs the rest. The value axis has at most four short tick labels
(``100 kB``, not ``100.00 kB``), so neighbouring labels never run into each other. A latency the
run flagged as noisy (its timed forwards spread too wide, see
:func:`netcompress.reporting.tables.latency_noisy`) is drawn hatched, and labelled with ``±``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator

from netcompress.core.errors import ConfigError
from netcompress.evaluation.units import format_bytes, format_count, format_ms
from netcompress.reporting.plots import _check_keys, _label, _new_figure, _save
from netcompress.reporting.tables import NOISY_MARK, latency_noisy

# more stages than this are drawn as horizontal bars (a sweep's points: long names, many rows)
HORIZONTAL_BARS_FROM = 8
# a stage name longer than this (characters) would not fit slanted under its bar: horizontal bars too
LONG_STAGE_NAME = 28
# a panel whose largest value is over 10**LOG_FROM_DECADES times its smallest gets a log axis
LOG_FROM_DECADES = 2.0
LOG_SCALED = ("size_bytes", "latency_ms", "params", "nonzero_params", "macs")


def _percent_label(value: float) -> str:
    return f"{100.0 * float(value):.2f}"


def _short(value: float, units: Sequence[str], base: float = 1000.0) -> str:
    """A tick label of at most three significant digits: ``100 kB``, ``1.5 MB``, ``0.02 ms``."""
    index = 0
    while abs(value) >= base and index < len(units) - 1:
        value /= base
        index += 1
    return f"{value:.3g} {units[index]}".strip()


_BAR_LABELS = {
    "accuracy": _percent_label,
    "size_bytes": format_bytes,
    "params": format_count,
    "nonzero_params": format_count,
    "macs": format_count,
    "latency_ms": format_ms,
}
_TICKS = {
    "size_bytes": lambda v: _short(v, ("B", "kB", "MB", "GB", "TB")),
    "params": lambda v: _short(v, ("", "K", "M", "G", "T")),
    "nonzero_params": lambda v: _short(v, ("", "K", "M", "G", "T")),
    "macs": lambda v: _short(v, ("", "K", "M", "G", "T")),
    "latency_ms": lambda v: f"{v:.3g} ms",
}


def _stage_value(stage: Mapping[str, Any], key: str) -> Any:
    # bytes on disk: the compact file (sparse .ncz, bit-packed .ncq) where a stage has one
    return (stage.get("stored_bytes") or stage.get(key)) if key == "size_bytes" else stage.get(key)


def needs_log_axis(key: str, values: Sequence[Any]) -> bool:
    """True when ``key`` is a size, count or latency whose positive values span over
    :data:`LOG_FROM_DECADES` decades.

    Example:
        >>> needs_log_axis("latency_ms", [100.0, 0.1]), needs_log_axis("latency_ms", [0.2, 0.1])
        (True, False)
    """
    positive = [float(v) for v in values if v is not None and float(v) > 0]
    return (
        key in LOG_SCALED
        and len(positive) > 1
        and math.log10(max(positive) / min(positive)) > LOG_FROM_DECADES
    )


def stage_bars_figure(
    stages: Sequence[Mapping[str, Any]],
    *,
    metrics: Sequence[str] = ("accuracy", "size_bytes", "latency_ms"),
    title: str | None = None,
    width_px: int | None = None,
    height_px: int = 400,
) -> Figure:
    """The figure :func:`plot_stage_bars` saves (drawn, not saved: for tests and callers that embed it)."""
    if not stages:
        raise ConfigError("plot_stage_bars needs at least one stage")
    _check_keys(stages, metrics)
    # a metric no stage measured (latency with evaluate.latency off) gets no empty panel
    metrics = [k for k in metrics if any(_stage_value(stage, k) is not None for stage in stages)] or list(
        metrics[:1]
    )
    names = [str(stage.get("name", f"stage {i}")) for i, stage in enumerate(stages)]
    longest = max(len(n) for n in names)
    horizontal = len(names) > HORIZONTAL_BARS_FROM or longest > LONG_STAGE_NAME
    if horizontal:  # names read on the left, one row per stage
        fig = _new_figure(
            width_px or 40 + 6 * longest + 300 * len(metrics), max(height_px, 90 + 18 * len(names))
        )
        axes = fig.subplots(1, len(metrics), squeeze=False, sharey=True)[0]
    else:
        fig = _new_figure(width_px or 80 + 320 * len(metrics), height_px)
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, key in zip(axes, metrics):
        _draw_panel(ax, key, stages, names, horizontal)
    if horizontal:
        axes[0].invert_yaxis()  # the first stage on top, as in the table (shared y: once for all)
    if title:
        fig.suptitle(title)
    return fig


def _draw_panel(
    ax: Any, key: str, stages: Sequence[Mapping[str, Any]], names: list[str], horizontal: bool
) -> None:
    raw = [_stage_value(stage, key) for stage in stages]
    scale = 100.0 if key == "accuracy" else 1.0
    log = needs_log_axis(key, raw)
    shown = [i for i, v in enumerate(raw) if v is not None and (not log or float(v) > 0)]
    heights = [float(raw[i]) * scale for i in shown]
    noisy = [key == "latency_ms" and latency_noisy(stages[i]) for i in shown]
    formatter = _BAR_LABELS.get(key)
    labels = [
        (formatter(raw[i]) if formatter else f"{float(raw[i]):.4g}") + (f" {NOISY_MARK}" if flag else "")
        for i, flag in zip(shown, noisy)
    ]
    colors = [f"C{i % 10}" for i in shown]
    value_axis = ax.xaxis if horizontal else ax.yaxis
    if horizontal:
        bars = ax.barh(shown, heights, color=colors)
        ax.set_yticks(range(len(names)), labels=names, fontsize=8)
    else:
        bars = ax.bar(shown, heights, color=colors)
        upright = len(names) > 4  # slanted names of many bars run into each other
        ax.set_xticks(
            range(len(names)),
            labels=names,
            rotation=90 if upright else 30,
            ha="center" if upright else "right",
        )
    for bar, flag in zip(bars, noisy):
        if flag:
            bar.set_hatch("//")
            bar.set_edgecolor("black")
    rotation = 90 if not horizontal and len(names) > 4 else 0
    ax.bar_label(bars, labels=labels, fontsize=7, rotation=rotation, padding=2)
    if log:
        low, high = min(heights), max(heights)
        (ax.set_xscale if horizontal else ax.set_yscale)("log")
        # room on the far side of the largest bar for its label
        limits = (low / 3.0, high * 10 ** (0.45 * math.log10(high / low) + 0.3))
        (ax.set_xlim if horizontal else ax.set_ylim)(*limits)
        value_axis.set_major_locator(LogLocator(numticks=4))
        value_axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    else:
        value_axis.set_major_locator(MaxNLocator(nbins=4 if horizontal else 6, min_n_ticks=2))
        ax.margins(**({"x": 0.35} if horizontal else {"y": 0.25 if len(names) > 4 else 0.1}))
    if (
        key == "accuracy" and not log
    ):  # percent: the ticks stop at 100 even where the labels need room past it
        value_axis.set_major_locator(FixedLocator([0, 25, 50, 75, 100]))
    if key in _TICKS:
        tick = _TICKS[key]
        value_axis.set_major_formatter(FuncFormatter(lambda v, _: tick(v) if v > 0 else "0"))
    ax.grid(axis="x" if horizontal else "y", alpha=0.3)
    suffix = " (%)" if key == "accuracy" else ", log scale" if log else ""
    if any(noisy):
        suffix += f"; {NOISY_MARK} noisy"
    ax.set_title(_label(key) + suffix, fontsize=10)


def plot_stage_bars(
    stages: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    metrics: Sequence[str] = ("accuracy", "size_bytes", "latency_ms"),
    title: str | None = None,
    width_px: int | None = None,
    height_px: int = 400,
) -> Path:
    """One bar panel per metric, one bar per stage (e.g. original, pruned, quantized).

    ``accuracy`` is drawn in percent; bytes and counts are labelled in human units on the bars.
    A stage missing a metric gets no bar in that panel; a metric no stage has gets no panel. More
    than ``HORIZONTAL_BARS_FROM`` stages, or names longer than ``LONG_STAGE_NAME`` characters, are
    drawn as horizontal bars, one row per stage. Sizes, counts and latencies spanning over two
    decades get a log axis; a noisy latency is hatched and marked ``±``.

    Example:
        >>> plot_stage_bars(stages, "stages.png", metrics=("accuracy", "size_bytes", "latency_ms"))
    """
    fig = stage_bars_figure(stages, metrics=metrics, title=title, width_px=width_px, height_px=height_px)
    return _save(fig, path)
