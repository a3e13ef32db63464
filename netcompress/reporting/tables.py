"""Tables: any rows printed with Rich, the stage table of a run, and a comparison over runs.

A *stage* is one measured state of the model in a run (original, after pruning, after
quantization...): a dict with ``name``, ``accuracy`` (fraction 0..1), ``params``,
``nonzero_params``, ``macs``, ``size_bytes``, ``latency_ms`` and optionally anything else.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from netcompress.core.errors import ConfigError, DataError
from netcompress.evaluation.units import format_bytes, format_count, format_ms, format_percent


def format_cell(value: Any) -> str:
    """Format one table value: ints with thousands separators, floats with 4 significant digits.

    Example:
        >>> format_cell(2168203), format_cell(0.123456), format_cell(None)
        ('2,168,203', '0.1235', '-')
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple)) for v in value):  # e.g. a layer's input shapes
            return " ".join(format_cell(v) for v in value)
        return str(list(value))
    return str(value)


def print_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    title: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    console: Console | None = None,
) -> str:
    """Print ``rows`` as a Rich table and return the table as plain text.

    ``columns`` picks and orders the keys (default: every key, in first-seen order);
    ``headers`` renames them. Integers get thousands separators, floats 4 significant digits.

    Example:
        >>> text = print_table(layer_table(model, x), ["name", "type", "out_shape", "params", "macs"], "Layers")
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    headers = dict(headers or {})
    table = Table(title=title)
    for column in columns:
        numeric = any(isinstance(row.get(column), (int, float)) for row in rows)
        table.add_column(headers.get(column, column), justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*[format_cell(row.get(column)) for column in columns])
    # a second, silent console renders the same table to text for the caller and for tests
    recorder = Console(record=True, width=200, file=io.StringIO())
    recorder.print(table)
    text = recorder.export_text()
    # Redirected output (CI logs, files) would otherwise be squeezed into 80 columns.
    (console or Console(width=None if sys.stdout.isatty() else 160)).print(table)
    return text


# a latency whose timed forwards spread wider than this ((p95 - p5) / p50) is re-measured, then flagged
NOISY_SPREAD = 0.5
NOISY_MARK = "±"
NOISY_NOTE = (
    f"{NOISY_MARK}: the latency's timed forwards spread more than {NOISY_SPREAD:.0%} of their median even "
    "when re-measured (a busy machine); read its speed-up with care"
)
TRAINING_OPS = ("train", "distill")


def latency_noisy(stage: Mapping[str, Any]) -> bool:
    """True when a stage's latency (batch 1, the one tables and plots show) is not to be trusted at a
    glance: flagged by the run, or its ``latency_spread`` above :data:`NOISY_SPREAD`."""
    if "latency_noisy" in stage:
        return bool(stage["latency_noisy"])
    spread = stage.get("latency_spread")
    return isinstance(spread, (int, float)) and spread > NOISY_SPREAD


def baseline_stage(step_ops: Sequence[str]) -> int:
    """The one rule ``run`` and ``report`` take ratios by: the stage measured after the first step when
    the run starts by training (``train``/``distill``: the untrained initial model is no baseline),
    else the initial stage (index 0). ``step_ops`` are the run's step ops in order.

    Example:
        >>> baseline_stage(["train", "prune"]), baseline_stage(["prune", "train"])
        (1, 0)
    """
    return 1 if step_ops and step_ops[0] in TRAINING_OPS else 0


def run_baseline(metrics: Mapping[str, Any]) -> int:
    """The baseline stage of a run's ``metrics.json``: the one it recorded, else :func:`baseline_stage`
    of its steps (runs written before it was recorded), within the stages it has."""
    stages = metrics.get("stages") or []
    index = metrics.get("baseline")
    if not isinstance(index, int) or isinstance(index, bool):
        steps = metrics.get("steps") or []
        first = steps[0] if steps and steps[0].get("index") == 0 else {}
        index = baseline_stage(Path(str(first.get("dir", ""))).name.split("-")[1:2])  # steps/01-train-x
    return index if 0 <= index < len(stages) else 0


def _ratio(value: Any, base: Any) -> float | None:
    if value is None or base in (None, 0):
        return None
    return float(value) / float(base)


STAGE_COLUMNS = (
    "stage",
    "accuracy",
    "Δ accuracy",
    "params",
    "nonzero",
    "MACs",
    "size",
    "size ×",
    "latency",
    "speed-up",
)


def _size(stage: Mapping[str, Any]) -> Any:
    """Bytes on disk: the compact file (sparse .ncz, bit-packed .ncq) when the stage has one."""
    return stage.get("stored_bytes") or stage.get("size_bytes")


def stage_table_rows(stages: Sequence[Mapping[str, Any]], *, baseline: int = 0) -> list[dict[str, str]]:
    """Format stages for display, with columns relative to the stage at index ``baseline``.

    ``size`` is the compact file's bytes where a stage has one (``stored_bytes``, marked with its
    format), else the dense state dict's. ``Δ accuracy`` is in percentage points, ``size ×`` is size / baseline size, ``speed-up`` is
    baseline latency / latency (above 1 is faster). Missing values show as ``-``; a latency
    :func:`latency_noisy` flags (and any speed-up taken from it) carries :data:`NOISY_MARK`.

    Example:
        >>> stage_table_rows([{"name": "original", "accuracy": 0.9, "size_bytes": 2_000_000, ...},
        ...                   {"name": "int8", "accuracy": 0.89, "size_bytes": 500_000, ...}])[1]["size ×"]
        '0.25×'
    """
    if not stages:
        raise ConfigError("stage table needs at least one stage")
    if not 0 <= baseline < len(stages):
        raise ConfigError(f"baseline stage {baseline} is not one of the {len(stages)} stages")
    base = stages[baseline]
    rows = []
    for index, stage in enumerate(stages):
        accuracy = stage.get("accuracy")
        delta = None if accuracy is None or base.get("accuracy") is None else accuracy - base["accuracy"]
        size_ratio = _ratio(_size(stage), _size(base))
        speedup = _ratio(base.get("latency_ms"), stage.get("latency_ms"))
        noisy = f" {NOISY_MARK}" if latency_noisy(stage) else ""
        rows.append(
            {
                "stage": str(stage.get("name") or stage.get("stage") or f"stage {index}"),
                "accuracy": format_percent(accuracy),
                "Δ accuracy": "-" if delta is None else f"{100.0 * delta:+.2f} pp",
                "params": format_count(stage.get("params")),
                "nonzero": format_count(stage.get("nonzero_params")),
                "MACs": format_count(stage.get("macs")),
                "size": format_bytes(_size(stage))
                + (f" ({stage['stored_format']})" if stage.get("stored_bytes") else ""),
                "size ×": "-" if size_ratio is None else f"{size_ratio:.2f}×",
                "latency": format_ms(stage.get("latency_ms")) + (noisy if stage.get("latency_ms") else ""),
                "speed-up": "-"
                if speedup is None
                else f"{speedup:.2f}×" + (f" {NOISY_MARK}" if noisy or latency_noisy(base) else ""),
            }
        )
    return rows


def print_stage_table(
    stages: Sequence[Mapping[str, Any]],
    *,
    title: str = "Stages",
    console: Console | None = None,
    baseline: int = 0,
) -> str:
    """Print the stage table (accuracy %, params, MACs, bytes, latency, ratios) and return its text.

    Example:
        >>> print_stage_table(result["stages"], title="quickstart")
    """
    rows = stage_table_rows(stages, baseline=baseline)
    if baseline:
        title = f"{title} (ratios relative to '{rows[baseline]['stage']}')"
    text = print_table(rows, list(STAGE_COLUMNS), title, console=console)
    if any(latency_noisy(stage) for stage in stages):
        (console or Console()).print(NOISY_NOTE)
        text += NOISY_NOTE + "\n"
    return text


def read_run_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Load ``<run_dir>/metrics.json`` (shape ``{"stages": [stage dicts]}``), with errors naming the file.

    Example:
        >>> read_run_metrics("runs/quickstart")["stages"][0]["name"]
        'original'
    """
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise DataError(f"no metrics.json in run folder {Path(run_dir)}")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise DataError(f"{path} must hold an object with a 'stages' list")
    return data


COMPARE_KEYS = (
    "accuracy",
    "params",
    "nonzero_params",
    "macs",
    "size_bytes",
    "stored_bytes",
    "stored_format",
    "latency_ms",
)


def compare_runs(run_dirs: Sequence[str | os.PathLike], *, which: str = "last") -> list[dict[str, Any]]:
    """Rows comparing runs: each run's final stage (``which="last"``) or every stage (``"all"``).

    Each row holds ``name`` ("run: stage"), ``run`` (the folder's name; where two folders share a
    name, enough of their paths to tell them apart), ``stage``, the raw measurements and, relative to
    the run's baseline stage (:func:`run_baseline`, the rule ``netcompress run`` prints ratios by),
    ``accuracy_delta`` (fraction), ``size_ratio`` and ``speedup``. Rows are JSON-able; pass them to
    ``print_table``, to a report's ``tables``, or to ``print_stage_table`` (then ratios are relative
    to the first run).

    Example:
        >>> print_table(compare_runs(["runs/slim_1e-4", "runs/slim_1e-2"]), title="runs")
    """
    if which not in ("last", "all"):
        raise ConfigError(f"which={which!r} is not one of ['last', 'all']")
    if not run_dirs:
        raise ConfigError("compare_runs needs at least one run folder")
    rows = []
    for run_dir, run in zip(run_dirs, run_labels(run_dirs)):
        metrics = read_run_metrics(run_dir)
        stages = metrics["stages"]
        if not stages:
            raise DataError(f"{Path(run_dir) / 'metrics.json'} has an empty 'stages' list")
        base = stages[run_baseline(metrics)]
        for stage in stages if which == "all" else stages[-1:]:
            # "name" makes the rows printable as stages: print_stage_table(compare_runs(dirs))
            row: dict[str, Any] = {
                "name": f"{run}: {stage.get('name')}",
                "run": run,
                "stage": stage.get("name"),
            }
            row.update({key: stage.get(key) for key in COMPARE_KEYS})
            if "latency_noisy" in stage or "latency_spread" in stage:
                row["latency_noisy"] = latency_noisy(stage)
            accuracy, base_accuracy = stage.get("accuracy"), base.get("accuracy")
            row["accuracy_delta"] = (
                None if accuracy is None or base_accuracy is None else accuracy - base_accuracy
            )
            row["size_ratio"] = _ratio(_size(stage), _size(base))
            row["speedup"] = _ratio(base.get("latency_ms"), stage.get("latency_ms"))
            rows.append(row)
    return rows


def run_labels(run_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """A distinct label per run folder: its name, with as many parent folders as it takes to tell
    folders of the same name apart (``a/demo``, ``b/demo``), and ``#2``... for a folder given twice.

    Example:
        >>> run_labels(["x/runs/demo", "y/runs/demo", "runs/tiny"])
        ['x/runs/demo', 'y/runs/demo', 'tiny']
    """
    parts = [Path(os.path.abspath(d)).parts for d in run_dirs]
    labels = []
    for own in parts:
        depth = 1
        while depth < len(own) and sum(other[-depth:] == own[-depth:] for other in parts) > sum(
            other == own for other in parts
        ):
            depth += 1
        labels.append("/".join(own[-depth:]))
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    return labels
