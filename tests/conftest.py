"""Shared fixtures: paths to the real data sets beside the project, skipped when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NETCOMPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))

# one thread: tests check numbers, not speed, and several may share a 2-core machine
torch.set_num_threads(1)

# CI replays the same fuzzing cases every run (a red build then means a change broke something, not that
# the dice found a new case); local runs explore new cases, and a failure prints the case to add
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, database=None)
    if os.environ.get("CI"):
        _hypothesis_settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    path = SHARED_DATA / "cifar10-jpg.tar.gz"
    if not path.exists():
        pytest.skip(f"CIFAR-10 archive not found at {path} (set NETCOMPRESS_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def fsdd_archive() -> Path:
    path = SHARED_DATA / "fsdd.tar.gz"
    if not path.exists():
        pytest.skip(f"FSDD archive not found at {path} (set NETCOMPRESS_SHARED_DATA)")
    return path


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
