"""SIGKILL a recipe run at points spread over its life (inside training, between steps, during writes),
then --resume: the final metrics equal an uninterrupted run's and no file is left half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

RECIPE = textwrap.dedent(
    """
    name: killme
    seed: 3
    model: {name: digits_cnn}
    data: {name: digits, batch_size: 64}
    steps:
      - {op: train, method: supervised, epochs: 3, lr: 0.05, progress: false}
      - {op: prune, method: channel, ratio: 0.5}
      - {op: train, method: finetune, epochs: 2, lr: 0.01, progress: false}
      - {op: quantize, method: ptq_static, bits: 8, num_calib_batches: 2}
    evaluate: {latency: false}
    report: {plots: false}
    """
)
# what a measurement of time may change between two runs; everything else must be identical
TIMING_KEYS = ("time_s", "train_time_s", "latency", "read_s", "seconds")


def _run(folder: Path, out: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "netcompress.cli.main", "run", "recipe.yaml", "--out", out, "--quiet", *extra],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if not any(t in k for t in TIMING_KEYS)}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _final(folder: Path) -> list:
    return _stable(json.loads((folder / "metrics.json").read_text())["stages"])


def _check_no_half_files(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    for path in folder.rglob("*.json"):
        json.loads(path.read_text())  # every JSON file parses: none was cut off


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref")
    (folder / "recipe.yaml").write_text(RECIPE)
    started = time.perf_counter()
    proc = _run(folder, "run")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return folder, time.perf_counter() - started


@pytest.mark.parametrize(
    "fraction", [0.6, pytest.param(0.35, marks=pytest.mark.slow), pytest.param(0.85, marks=pytest.mark.slow)]
)
def test_killed_then_resumed_run_ends_with_the_same_metrics(reference, tmp_path, fraction):
    ref_folder, duration = reference
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    proc = _run(tmp_path, "run")
    time.sleep(duration * fraction)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    resumed = _run(tmp_path, "run", "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert _final(tmp_path / "run") == _final(ref_folder / "run")
    _check_no_half_files(tmp_path / "run")
