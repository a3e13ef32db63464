"""`netcompress report A B` compares final stages by the same size `netcompress run` prints: the compact file
(`stored_bytes`, e.g. the bit-packed `.ncq` of an int8 model) where a stage has one. The comparison rows used
to drop it, so a run's int8 stage showed its dense state dict (73.35 MB instead of 54.28 MB (ncq)) and its
size ratio against the first run was 1.35x too big."""

import json
from io import StringIO
from pathlib import Path

from rich.console import Console

from netcompress.reporting import compare_runs, print_stage_table


def _run(folder: Path, stage: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"stages": [stage]}))
    return folder


def test_comparison_uses_the_stored_size(tmp_path):
    a = _run(tmp_path / "a", {"name": "onnx int8 (ORT)", "accuracy": 0.5, "size_bytes": 1_000_000})
    b = _run(
        tmp_path / "b",
        {
            "name": "int8",
            "accuracy": 0.5,
            "size_bytes": 4_000_000,
            "stored_bytes": 3_000_000,
            "stored_format": "ncq",
        },
    )
    rows = compare_runs([a, b])
    assert rows[1]["stored_bytes"] == 3_000_000 and rows[1]["stored_format"] == "ncq"
    console = Console(file=StringIO(), width=200)
    text = print_stage_table(rows, baseline=0, console=console)
    assert "3.00 MB (ncq)" in text and "3.00×" in text and "4.00 MB" not in text
