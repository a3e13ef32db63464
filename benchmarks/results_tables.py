"""Report helpers shared by the benchmark scripts: the machine line and the Markdown tables of RESULTS.md.

Split out of :mod:`cifar_protocol` (which re-exports every name here, so ``cp.markdown_table`` and the rest keep
working in every script).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from netcompress.core import ConfigError, atomic_write_text
from netcompress.evaluation import keep_heap_warm

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"


def machine_description() -> dict[str, Any]:
    """CPU model and count, torch version and threads, load average: the context of every timing.

    Example:
        >>> machine_description()["cpu_count"] >= 1
        True
    """
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in load],
        "heap_kept_warm": keep_heap_warm(),
    }


def describe_machine(machine: Mapping[str, Any], *, timing_threads: int) -> str:
    """One Markdown line describing the machine, for RESULTS.md."""
    load = ", ".join(f"{x:.1f}" for x in machine["load_average"])
    return (
        f"Machine: {machine['cpu_count']} CPUs ({machine['cpu']}), shared with other jobs (load average "
        f"{load} at the end), torch {machine['torch']}, {machine['torch_threads']} torch threads for "
        f"training, {timing_threads} for timing"
        + (
            "; heap kept warm while timing (glibc mallopt, see keep_heap_warm)."
            if machine.get("heap_kept_warm")
            else "."
        )
    )


Column = tuple[str, str, Callable[[Any], str]]


def fmt_number(digits: int = 0) -> Callable[[Any], str]:
    """Formatter: thousands separators and ``digits`` decimals; None/missing shows as an en dash."""

    def _fmt(value: Any) -> str:
        return "–" if value is None else f"{value:,.{digits}f}"

    return _fmt


def fmt_percent(value: Any) -> str:
    """A 0..1 fraction as a percentage with two decimals (``0.7812 -> 78.12``)."""
    return "–" if value is None else f"{100 * value:.2f}"


def fmt_text(value: Any) -> str:
    return "–" if value is None else str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A Markdown table: one ``(header, key, formatter)`` per column; numbers right-aligned.

    A column is right-aligned when its formatter is not :func:`fmt_text`. Pipes in cells are
    escaped so a value can never break the table.

    Example:
        >>> print(markdown_table([{"m": "a", "x": 1234}], [("method", "m", fmt_text), ("n", "x", fmt_number())]))
        | method | n |
        | --- | ---: |
        | a | 1,234 |
    """
    if not columns:
        raise ConfigError("markdown_table needs at least one column")
    header = "| " + " | ".join(h for h, _, _ in columns) + " |"
    align = "| " + " | ".join("---" if f is fmt_text else "---:" for _, _, f in columns) + " |"
    lines = [header, align]
    for row in rows:
        cells = [fmt(row.get(key)).replace("|", "\\|") for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_section(text: str, heading: str, body: str) -> str:
    """``text`` with the Markdown section ``heading`` (up to the next ``## `` heading) set to ``body``.

    A missing section is appended at the end. Other sections are kept byte for byte.

    Example:
        >>> replace_section("# R\\n\\n## A\\nold\\n\\n## B\\nb\\n", "## A", "new")
        '# R\\n\\n## A\\n\\nnew\\n\\n## B\\nb\\n'
    """
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    return text.rstrip("\n") + "\n\n" + section


def write_results_section(heading: str, body: str, *, path: Path = RESULTS_PATH) -> Path:
    """Re-read ``path`` right before writing and replace only the section ``heading`` (atomic)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    return atomic_write_text(path, replace_section(text, heading, body))
