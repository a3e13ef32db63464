"""Sweeps: one recipe run per combination of values, sharing every identical leading step.

A recipe may hold ``sweep:``, a mapping from override paths to lists of values::

    sweep:
      steps.0.lambda_: [0, 1.0e-4, 1.0e-2]
      steps.1.percent: [0.5, 0.9]

Each combination runs as its own run folder under ``<run>/points/``. Points whose leading steps
are identical (same model, data, seed and step configs up to that step) reuse the finished
step of an earlier point instead of recomputing it, so sweeping a pruning rate after a training
step trains once. The sweep writes a table of every point's final stage, the histograms and
curves that steps publish in their summaries (``histograms``, ``curves``) drawn across points,
final accuracy against a swept number (E2: accuracy vs pruning amount, one line per model and
scope), and links to each point's own report.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from netcompress.core.errors import ConfigError
from netcompress.core.io import atomic_write_json, atomic_write_text
from netcompress.recipes.stages import RunResult


def sweep_points(sweep: Any) -> list[tuple[str, list[str]]]:
    """``[(label, overrides)]`` for every point, in a stable order.

    ``sweep`` is either a mapping ``path -> [values]`` (every combination is a point) or a list
    of points, each a mapping ``path -> value`` with an optional ``label``.
    """
    if isinstance(sweep, list) and sweep:
        points = []
        for i, point in enumerate(sweep):
            if not isinstance(point, dict) or not point:
                raise ConfigError(f"sweep point {i + 1} must be a mapping of override paths to values")
            pairs = [(k, v) for k, v in point.items() if k != "label"]
            label = str(point.get("label") or _label(pairs))
            points.append((label, [_override(k, v) for k, v in pairs]))
        return points
    if not isinstance(sweep, dict) or not sweep:
        raise ConfigError(
            "'sweep' must map override paths (e.g. steps.0.lambda_) to lists of values, or list the points"
        )
    for path, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep {path!r} must be a non-empty list of values")
    keys = list(sweep)
    points = []
    for combo in itertools.product(*(sweep[k] for k in keys)):
        label = _label(zip(keys, combo))
        points.append((label, [_override(k, v) for k, v in zip(keys, combo)]))
    return points


def _label(pairs: Iterable[tuple[str, Any]]) -> str:
    """A point's name: ``last-path-part=value`` for each swept path, e.g. ``lambda_=0.0, percent=0.5``."""
    return ", ".join(f"{path.split('.')[-1]}={_short(value)}" for path, value in pairs)


def _override(path: str, value: Any) -> str:
    return f"{path}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"


def run_sweep(
    raw: dict[str, Any],
    *,
    run_dir: Path,
    resume: bool,
    progress: bool,
    source: Any,
    run_point: Callable[..., RunResult],
) -> RunResult:
    """Run every point with ``run_point`` (the runner's ``run_recipe``), then write the sweep's report."""
    from netcompress.training import distributed

    base = {k: v for k, v in raw.items() if k != "sweep"}
    points = sweep_points(raw["sweep"])
    results = []
    for i, (label, overrides) in enumerate(points):  # under torchrun: every rank, in this order
        point_dir = run_dir / "points" / f"{i:02d}-{_slug(label)}"
        if progress:
            print(f"\n=== sweep point {i + 1}/{len(points)}: {label} ===")
        reuse = tuple(r.run_dir for r in results)
        result = run_point(
            {**base, "name": f"{base.get('name', 'run')} [{label}]"},
            overrides=overrides,
            out_dir=point_dir,
            resume=resume and distributed.on_main(point_dir.exists),  # rank 0's disk decides
            progress=progress,
            _reuse_from=reuse,
        )
        results.append(result)
    return distributed.on_main(  # rank 0 writes the sweep's files; every rank gets the result
        lambda: _finish_sweep(raw, run_dir, points, results, progress=progress, source=source)
    )


def _finish_sweep(
    raw: dict[str, Any],
    run_dir: Path,
    points: list[tuple[str, list[str]]],
    results: list[RunResult],
    *,
    progress: bool,
    source: Any,
) -> RunResult:
    """Write the sweep's metrics, resolved recipe and report; the sweep's RunResult."""
    base = {k: v for k, v in raw.items() if k != "sweep"}
    stages = [{**r.final, "name": label} for (label, _), r in zip(points, results)]
    metrics = {
        "name": base.get("name"),
        "sweep": raw["sweep"],
        "baseline": 0,  # the points' final stages are compared with the first point's
        "points": [
            {
                "label": label,
                "overrides": ov,
                "run_dir": str(r.run_dir.relative_to(run_dir)),
                "stages": r.stages,
            }
            for (label, ov), r in zip(points, results)
        ],
        "stages": stages,
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(
        run_dir / "recipe.yaml", f"# sweep of {source}\n" + yaml.safe_dump(raw, sort_keys=False)
    )
    from netcompress.reporting import print_stage_table

    if progress:
        print_stage_table(stages, title="Sweep: final stage of each point")
    md, html = _write_sweep_report(run_dir, raw, points, results, stages)
    if progress:
        print(f"sweep report: {md}  and  {html}")
    return RunResult(run_dir, raw, stages, [], md, html, points=results)


def shared_label(labels: list[str]) -> str:
    """The ``key=value`` parts every label has: points that share a result are named by what they share.

    Example:
        >>> shared_label(["lambda_=0.0, percent=0.5", "lambda_=0.0, percent=0.9"])
        'lambda_=0.0'
    """
    parts = [label.split(", ") for label in labels]
    common = [p for p in parts[0] if all(p in other for other in parts[1:])]
    return ", ".join(common) or " / ".join(labels)


def numeric_axis_series(
    sweep: Any, stages: list[dict[str, Any]], *, metric: str = "accuracy"
) -> tuple[str, dict[str, list[tuple[float, float]]]] | None:
    """``(axis, {line label: [(value, metric)]})`` for a sweep over numbers, else None.

    The axis is the last swept path whose values are all numbers (at least two); every combination
    of the other paths is one line, named by their values. ``stages`` are the points' final stages
    in :func:`sweep_points` order. Points missing the metric are left out of their line.

    Example:
        >>> numeric_axis_series({"model": ["a", "b"], "steps.1.amount": [0.0, 0.5]},
        ...                     [{"accuracy": a} for a in (0.9, 0.8, 0.7, 0.6)])
        ('amount', {'model=a': [(0.0, 0.9), (0.5, 0.8)], 'model=b': [(0.0, 0.7), (0.5, 0.6)]})
    """
    if not isinstance(sweep, dict):
        return None
    numeric = [
        key
        for key, values in sweep.items()
        if isinstance(values, list)
        and len(values) >= 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    ]
    if not numeric:
        return None
    axis = numeric[-1]
    keys = list(sweep)
    series: dict[str, list[tuple[float, float]]] = {}
    for combo, stage in zip(itertools.product(*(sweep[k] for k in keys)), stages):
        value = dict(zip(keys, combo))
        line = _label((k, value[k]) for k in keys if k != axis)
        points = series.setdefault(line or axis.split(".")[-1], [])
        if stage.get(metric) is not None:
            points.append((float(value[axis]), float(stage[metric])))
    series = {line: points for line, points in series.items() if points}
    return (axis.split(".")[-1], series) if series else None


def _write_sweep_report(
    run_dir: Path,
    raw: dict[str, Any],
    points: list[tuple[str, list[str]]],
    results: list[RunResult],
    stages: list[dict],
) -> tuple[Path, Path]:
    from netcompress import reporting

    plots: dict[str, Path] = {}
    plots_dir = run_dir / "plots"
    histograms: dict[str, list[tuple[list[str], Any]]] = {}
    curves: dict[str, dict[str, Any]] = {}
    for (label, _), result in zip(points, results):
        for step in result.steps:
            for name, values in (step["summary"].get("histograms") or {}).items():
                panels = histograms.setdefault(name, [])
                same = next((labels for labels, seen in panels if seen == values), None)
                if same is None:
                    panels.append(([label], values))
                else:  # a step the points share (reused): one panel, not one per point
                    same.append(label)
            for name, curve in (step["summary"].get("curves") or {}).items():
                curves.setdefault(name, {"curve": curve, "series": {}})["series"][label] = list(
                    zip(curve["x"], curve["y"])
                )
    for name, panels in histograms.items():
        path = plots_dir / f"hist-{_slug(name)}.png"
        data = {shared_label(labels): values for labels, values in panels}
        reporting.plot_histograms(data, path, title=name, xlabel=name)
        plots[f"{name}, one panel per distinct result"] = path
    for name, entry in curves.items():
        path = plots_dir / f"curve-{_slug(name)}.png"
        reporting.plot_accuracy_vs_params(
            entry["series"], path, title=name, xlabel=entry["curve"].get("x_label", "parameters")
        )
        plots[f"{name}, one line per sweep point"] = path
    by_axis = numeric_axis_series(raw["sweep"], stages)
    if by_axis is not None:
        axis, series = by_axis
        path = plots_dir / f"accuracy-vs-{_slug(axis)}.png"
        reporting.plot_accuracy_vs_params(series, path, title=f"final accuracy vs {axis}", xlabel=axis)
        plots[f"final accuracy vs {axis}, one line per setting of the other swept values"] = path
    for (label, _), result in zip(points, results):
        for step in result.steps:
            if step.get("has_history"):
                rel = Path(step["dir"]).name
                for png in sorted((result.run_dir / "plots").glob(f"{rel}-accuracy.png")):
                    plots[f"{label}: {step['label']} (accuracy vs epoch)"] = png
    path = plots_dir / "points.png"
    reporting.plot_stage_bars(stages, path)
    plots["Final stage of every sweep point"] = path
    links = "\n".join(
        f"- **{label}**: `{result.run_dir.relative_to(run_dir)}/report.md` (overrides: {' '.join(ov)})"
        for (label, ov), result in zip(points, results)
    )
    sections = [("Sweep", f"```yaml\n{yaml.safe_dump(raw['sweep'], sort_keys=False)}```"), ("Points", links)]
    if raw.get("description"):
        sections.insert(0, ("About this sweep", str(raw["description"])))
    title = (raw.get("report") or {}).get("title") or f"netcompress sweep: {raw.get('name', 'run')}"
    return reporting.write_report(run_dir, title=title, stages=stages, plots=plots, sections=sections)


def _short(value: Any) -> str:
    """A readable label for a value: a mapping's label or name (with its other scalars), else JSON."""
    if isinstance(value, dict):
        head = value.get("label") or value.get("name") or value.get("model")
        if head is not None:
            rest = [
                f"{k}={v}"
                for k, v in value.items()
                if k not in ("label", "name") and not isinstance(v, (dict, list))
            ]
            return f"{_short(head)}" + (f" ({', '.join(rest)})" if rest and not value.get("label") else "")
    return value if isinstance(value, str) else json.dumps(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("_")[:60]
