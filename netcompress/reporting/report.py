"""The run report: one Markdown file and one self-contained HTML file in a folder.

The HTML embeds every figure as base64 PNG and carries its own CSS, so it can be mailed or
opened anywhere as a single file. The Markdown links figures by relative paths inside the
report folder (figures outside it are copied into ``figures/``), so the folder can be moved.
Both files are written atomically.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import shutil
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from netcompress.core.errors import ConfigError, DataError
from netcompress.core.io import atomic_write_text
from netcompress.reporting.markdown_html import inline_html, markdown_to_html
from netcompress.reporting.tables import (
    NOISY_NOTE,
    STAGE_COLUMNS,
    format_cell,
    latency_noisy,
    stage_table_rows,
)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1000px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
code, pre { background: #f5f5f5; font-family: Menlo, Consolas, monospace; }
pre { padding: .6em; overflow-x: auto; }
"""


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(_md_escape(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_md_escape(format_cell(row.get(c))) for c in columns) + " |")
    return "\n".join(lines)


def _html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(format_cell(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def _place_figure(path: Path, out_dir: Path) -> Path:
    """Return the figure's path relative to ``out_dir``, copying it into ``figures/`` if outside."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(out_dir.resolve())
    except ValueError:
        target = out_dir / "figures" / path.name
        if target.exists() and target.resolve() != resolved:
            digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
            target = out_dir / "figures" / f"{digest}_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(resolved, target)
        return target.relative_to(out_dir)


def write_report(
    out_dir: str | os.PathLike,
    *,
    title: str,
    stages: Sequence[Mapping[str, Any]] = (),
    plots: Mapping[str, str | os.PathLike] | None = None,
    sections: Sequence[tuple[str, str]] = (),
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    basename: str = "report",
    baseline: int = 0,
) -> tuple[Path, Path]:
    """Write ``<out_dir>/report.md`` and ``<out_dir>/report.html``; returns their paths.

    Order: title, the stage table (relative columns vs the stage at index ``baseline``, see
    :func:`stage_table_rows` and :func:`~netcompress.reporting.tables.baseline_stage`), ``sections`` (``(heading, markdown_text)``), ``tables``
    (``{caption: rows}``, e.g. a layer table or :func:`compare_runs` rows), then ``plots``
    (``{caption: png_path}``).

    Example:
        >>> md, page = write_report("runs/quickstart", title="Quickstart", stages=stages,
        ...                         plots={"Accuracy per epoch": "runs/quickstart/history.png"},
        ...                         sections=[("Recipe", "Pruned to **50%** then fine-tuned.")])
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = dict(plots or {})
    tables = dict(tables or {})
    missing = {caption: str(p) for caption, p in plots.items() if not Path(p).is_file()}
    if missing:
        caption, path = next(iter(missing.items()))
        raise DataError(f"plot {caption!r} not found at {path}")
    for heading, text in sections:
        if not isinstance(text, str):
            raise ConfigError(f"section {heading!r} must be Markdown text, got {type(text).__name__}")

    md: list[str] = [f"# {title}", ""]
    body: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    if stages:
        rows = stage_table_rows(stages, baseline=baseline)
        note = f"Ratios (size ×, speed-up, Δ accuracy) are relative to '{rows[baseline]['stage']}'" + (
            ", the model after the first step: a run that starts by training is compared with the trained "
            "model, not the untrained one."
            if baseline
            else "."
        )
        if any(latency_noisy(stage) for stage in stages):
            note += f" {NOISY_NOTE}."
        splits = sorted({str(stage["split"]) for stage in stages if stage.get("split")})
        if splits:  # a run's stage rows say which split they were measured on
            note += f" Accuracy and loss are measured on the {' / '.join(splits)} split."
        md += ["## Stages", "", _markdown_table(rows, STAGE_COLUMNS), "", note, ""]
        body += ["<h2>Stages</h2>", _html_table(rows, STAGE_COLUMNS), f"<p>{html.escape(note)}</p>"]
    for heading, text in sections:
        md += [f"## {heading}", "", text.strip(), ""]
        body += [f"<h2>{inline_html(heading)}</h2>", markdown_to_html(text, heading_offset=2)]
    for caption, rows in tables.items():
        columns = _columns(rows)
        md += [f"## {caption}", "", _markdown_table(rows, columns) if rows else "(no rows)", ""]
        body += [
            f"<h2>{html.escape(caption)}</h2>",
            _html_table(rows, columns) if rows else "<p>(no rows)</p>",
        ]
    if plots:
        md += ["## Figures", ""]
        body.append("<h2>Figures</h2>")
    for caption, path in plots.items():
        relative = _place_figure(Path(path), out)
        md += [f"![{_md_escape(caption)}]({urllib.parse.quote(relative.as_posix())})", "", f"*{caption}*", ""]
        encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        body.append(
            f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    md_path = atomic_write_text(out / f"{basename}.md", "\n".join(md).rstrip() + "\n")
    html_path = atomic_write_text(out / f"{basename}.html", page)
    return md_path, html_path
