"""Data-test fixtures: one decode cache per test session (or NETCOMPRESS_CACHE when set)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    # A cache shared by every test of the session: the 60,000 JPEGs are decoded at most once.
    env = os.environ.get("NETCOMPRESS_CACHE")
    return env if env else str(tmp_path_factory.mktemp("netcompress-cache"))


@pytest.fixture(scope="session")
def cifar_bundle(cifar_archive: Path, data_cache_dir: str):
    import netcompress.data as ncd

    return ncd.load("cifar10", root=str(cifar_archive), cache_dir=data_cache_dir)
