"""What both dynamic methods put in their summaries: the accuracy-vs-MACs curve and its plot,
the training figures and parameter counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn


def accuracy_vs_macs(rows: list[dict[str, Any]], macs_key: str) -> dict[str, Any]:
    """``summary["curves"]["accuracy vs MACs"]``: one point per row (threshold or width).

    Example:
        >>> accuracy_vs_macs([{"macs": 10, "accuracy": 0.5}], "macs")
        {'x': [10], 'y': [0.5], 'x_label': 'MACs'}
    """
    return {"x": [r[macs_key] for r in rows], "y": [r["accuracy"] for r in rows], "x_label": "MACs"}


def plot_curve(curve: dict[str, Any], label: str, out_dir: Path | None, *, title: str) -> str | None:
    """Draw the curve into ``out_dir/accuracy_vs_macs.png`` (single-run reports draw no curves);
    None without a folder."""
    if out_dir is None:
        return None
    from netcompress.reporting import plot_accuracy_vs_params

    points = list(zip(curve["x"], curve["y"]))
    path = plot_accuracy_vs_params(
        {label: points}, out_dir / "accuracy_vs_macs.png", title=title, xlabel="MACs"
    )
    return str(path)


def train_summary(history: Any, config: Any) -> dict[str, Any]:
    """The training part of a dynamic method's summary (``{"epochs": 0}`` when it did not train)."""
    from netcompress.training.supervised import summarize

    return summarize(history, config) if history is not None else {"epochs": 0}


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
