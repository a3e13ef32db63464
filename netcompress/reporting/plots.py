"""The plots people draw by hand after a compression run, written straight to PNG files.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through
``pyplot``: no global figure state, no GUI backend, nothing left open after saving. Each
figure has a fixed size in pixels (``figsize * dpi``) and is written atomically.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from netcompress.core.errors import ConfigError
from netcompress.core.io import atomic_write_bytes
from netcompress.evaluation.units import format_count

DPI = 100
_PRETTY = {
    "train_acc": "train accuracy",
    "val_acc": "validation accuracy",
    "train_loss": "train loss",
    "val_loss": "validation loss",
    "lr": "learning rate",
    "accuracy": "accuracy",
    "size_bytes": "size on disk",
    "latency_ms": "latency (ms, batch 1)",
    "params": "parameters",
    "nonzero_params": "non-zero parameters",
    "macs": "MACs",
}


def _label(key: str) -> str:
    return _PRETTY.get(key, key.replace("_", " "))


def _new_figure(width_px: int, height_px: int) -> Figure:
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()  # release the artists now; Figure objects made without pyplot are not tracked
    return atomic_write_bytes(path, buffer.getvalue())


def _series(rows: Sequence[Mapping[str, Any]], x: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for index, row in enumerate(rows):
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        xs.append(row.get(x, index))
        ys.append(float(value))
    return xs, ys


def _legend(rows: Sequence[Mapping[str, Any]], x: str, key: str) -> str:
    return _label(key) if _series(rows, x, key)[1] else f"{_label(key)} (no values)"


def _check_keys(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> None:
    """A key no row has is a typo and an error; a key whose values are all None plots as an empty line."""
    if not rows:
        raise ConfigError("cannot plot an empty history (no rows)")
    present = {k for row in rows for k in row}
    for key in keys:
        if key not in present:
            raise ConfigError(f"history has no column {key!r}; columns: {', '.join(sorted(present))}")


DEFAULT_HISTORY_METRICS = ("train_acc", "val_acc")


def plot_history(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    metrics: Sequence[str] | None = None,
    secondary: Sequence[str] | None = None,
    x: str = "epoch",
    title: str | None = None,
    width_px: int = 800,
    height_px: int = 500,
) -> Path:
    """Plot history columns against ``x``; ``secondary`` columns go on a twin right-hand axis.

    Rows are per-epoch dicts as in ``History.rows``; missing or None values are skipped.
    ``metrics=None`` plots whichever of ``train_acc``/``val_acc`` has values (a run without a
    validation loader has none). A column no row has is an error; one whose values are all
    None (``val_acc`` without a validation loader) is listed in the legend as "no values".

    Example (E1, training accuracy and BN sparsity on one chart):
        >>> plot_history(history.rows, "slim.png", metrics=["train_acc"], secondary=["bn_sparsity"])
    """
    secondary = list(secondary or [])
    if metrics is None:
        present = {k for row in rows for k, v in row.items() if v is not None}
        metrics = [k for k in DEFAULT_HISTORY_METRICS if k in present] or list(DEFAULT_HISTORY_METRICS)
    _check_keys(rows, list(metrics) + secondary)
    fig = _new_figure(width_px, height_px)
    ax = fig.add_subplot()
    lines = []
    for key in metrics:
        lines += ax.plot(*_series(rows, x, key), marker="o", markersize=3, label=_legend(rows, x, key))
    ax.set_xlabel(x)
    ax.set_ylabel(", ".join(_label(k) for k in metrics))
    ax.grid(alpha=0.3)
    if secondary:
        ax2 = ax.twinx()
        for index, key in enumerate(secondary):
            color = f"C{len(metrics) + index}"
            lines += ax2.plot(
                *_series(rows, x, key),
                marker="s",
                markersize=3,
                linestyle="--",
                color=color,
                label=_legend(rows, x, key),
            )
        ax2.set_ylabel(", ".join(_label(k) for k in secondary))
    ax.legend(lines, [line.get_label() for line in lines], loc="best")
    ax.set_title(title or "Training history")
    return _save(fig, path)


def plot_lr(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    x: str = "epoch",
    log_y: bool = False,
    title: str | None = None,
    width_px: int = 800,
    height_px: int = 400,
) -> Path:
    """Plot the learning-rate schedule (column ``lr``) against ``x``.

    Example:
        >>> plot_lr(history.rows, "lr.png")
    """
    _check_keys(rows, ["lr"])
    fig = _new_figure(width_px, height_px)
    ax = fig.add_subplot()
    ax.plot(*_series(rows, x, "lr"), marker="o", markersize=3)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Learning-rate schedule")
    return _save(fig, path)


def plot_layer_sparsity(
    per_layer: Mapping[str, float],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    width_px: int = 800,
    height_px: int | None = None,
) -> Path:
    """Horizontal bars of the sparsity (fraction 0..1 of zeros) of each layer, top to bottom in order.

    The height grows with the number of layers unless ``height_px`` is given.

    Example:
        >>> plot_layer_sparsity({"features.0": 0.1, "classifier": 0.9}, "sparsity.png")
    """
    if not per_layer:
        raise ConfigError("plot_layer_sparsity needs at least one layer")
    names = list(per_layer)
    values = [float(per_layer[n]) for n in names]
    bad = [n for n, v in zip(names, values) if not 0.0 <= v <= 1.0]
    if bad:
        raise ConfigError(f"sparsity must be a fraction in [0, 1]; layer {bad[0]!r} has {per_layer[bad[0]]}")
    fig = _new_figure(width_px, height_px or max(300, 60 + 22 * len(names)))
    ax = fig.add_subplot()
    positions = np.arange(len(names))
    ax.barh(positions, values, color="C3")
    ax.set_yticks(positions, labels=names)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("sparsity (share of zero weights)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or "Sparsity per layer")
    return _save(fig, path)


def plot_histograms(
    data: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    bins: int = 50,
    xlabel: str = "value",
    log_y: bool = False,
    width_px: int | None = None,
    height_px: int = 400,
) -> Path:
    """One histogram panel per label, side by side with a shared x range (e.g. BN gammas per lambda).

    Values may be lists, numpy arrays or tensors of any shape (flattened).

    Example (E1):
        >>> plot_histograms({"lambda=0": g0, "lambda=1e-4": g1, "lambda=1e-2": g2}, "gammas.png",
        ...                 title="BN scaling factors", xlabel="|gamma|")
    """
    if not data:
        raise ConfigError("plot_histograms needs at least one labelled array")
    arrays = {label: np.asarray(_as_numpy(values), dtype=float).ravel() for label, values in data.items()}
    empty = [label for label, values in arrays.items() if values.size == 0]
    if empty:
        raise ConfigError(f"plot_histograms: the array for {empty[0]!r} is empty")
    lo = min(float(v.min()) for v in arrays.values())
    hi = max(float(v.max()) for v in arrays.values())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig = _new_figure(width_px or 350 * len(arrays) + 50, height_px)
    axes = fig.subplots(1, len(arrays), sharex=True, squeeze=False)[0]
    for ax, (label, values) in zip(axes, arrays.items()):
        ax.hist(values, bins=edges, color="C0", log=log_y)
        ax.set_title(label)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("count")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _as_numpy(values: Any) -> Any:
    detach = getattr(values, "detach", None)
    return detach().cpu().numpy() if detach is not None else values


def _count_tick(value: float, _position: int) -> str:
    return format_count(value)


def plot_accuracy_vs_params(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    log_x: bool = False,
    percent: bool = True,
    xlabel: str = "parameters",
    width_px: int = 800,
    height_px: int = 500,
) -> Path:
    """One line per label through ``(params, accuracy)`` points (E3: one line per pruning rate).

    Accuracies are fractions 0..1, drawn as percentages unless ``percent=False``. Points are
    drawn in the order given, which for iterative pruning is the order of the steps.

    Example:
        >>> plot_accuracy_vs_params({"rate 0.95": [(256779, 0.75), (243940, 0.74)]}, "acc_params.png")
    """
    if not series:
        raise ConfigError("plot_accuracy_vs_params needs at least one series")
    fig = _new_figure(width_px, height_px)
    ax = fig.add_subplot()
    scale = 100.0 if percent else 1.0
    for label, points in series.items():
        if not points:
            raise ConfigError(f"plot_accuracy_vs_params: series {label!r} has no points")
        params, accuracy = zip(*[(float(p), float(a) * scale) for p, a in points])
        ax.plot(params, accuracy, marker="o", markersize=4, label=label)
    if log_x:
        ax.set_xscale("log")
    if xlabel in ("parameters", "MACs"):
        ax.xaxis.set_major_formatter(_count_tick)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)" if percent else "accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title or "Accuracy vs parameters")
    return _save(fig, path)
