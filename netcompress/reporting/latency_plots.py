"""The plot of a latency (or file-size) target search: measured cost vs accuracy proxy of its candidates.

Drawn from the summary of ``prune_to_target(target="latency" | "bytes")``: the cost-table entries
(one group pruned alone to one width, grey), the greedy path the table predicted (dashed), the models
measured end to end (numbered by round), the unpruned model, and the target as a vertical line.

Example:
    >>> plot_cost_candidates(summary, summary["cost_table"]["entries"], "latency_candidates.png")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from netcompress.core.errors import ConfigError
from netcompress.reporting.plots import _new_figure, _save


def plot_cost_candidates(
    summary: Mapping[str, Any],
    table_points: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    width_px: int = 800,
    height_px: int = 500,
) -> Path:
    """Cost (ms or bytes) on x, accuracy proxy kept (%) on y, for every candidate the search measured.

    Example:
        >>> plot_cost_candidates(summary, summary["cost_table"]["entries"], "out/latency_candidates.png")
    """
    rows = summary.get("candidates") or []
    if not rows:
        raise ConfigError("plot_cost_candidates: the summary lists no measured candidates")
    unit, base = summary.get("unit", "ms"), float(summary["cost_table"]["base"])
    fig = _new_figure(width_px, height_px)
    ax = fig.add_subplot()
    if table_points:
        ax.scatter([p["cost"] for p in table_points], [100 * (1 - p["proxy_lost"]) for p in table_points],
                   s=12, color="0.6", label="one group at one width (cost table)")  # fmt: skip
    path_points = summary.get("trajectory") or []
    if path_points:
        ax.plot([p["predicted"] for p in path_points], [100 * (1 - p["proxy_lost"]) for p in path_points],
                linestyle="--", color="C0", linewidth=1, label="greedy path (predicted)")  # fmt: skip
    # the end-to-end measurements, scaled to the table's unpruned cost so both share one axis
    xs = [base * r["measured"] / max(r["unpruned"], 1e-12) for r in rows]
    ys = [100 * (1 - r["proxy_lost"]) for r in rows]
    ax.scatter(xs, ys, s=40, color="C3", zorder=3, label="measured end to end")
    for x, y, r in zip(xs, ys, rows):
        ax.annotate(f"round {r['round']}" + (" (met)" if r["met"] else ""), (x, y), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)  # fmt: skip
    ax.scatter([base], [100.0], marker="s", color="k", zorder=3, label="unpruned")
    ax.axvline(base / float(summary["requested_reduction"]), color="C2", linestyle=":",
               label=f"target ({summary['requested_reduction']}x lower)")  # fmt: skip
    what = "latency (ms)" if unit == "ms" else "file size (bytes)"
    ax.set_xlabel(what)
    ax.set_ylabel(
        "importance kept (%)" if summary.get("proxy") != "sensitivity" else "100 - accuracy drop (%)"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{summary['target']} target: candidates measured")
    return _save(fig, path)
