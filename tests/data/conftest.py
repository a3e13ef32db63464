"""Data-test fixtures: one decode cache per test session (or NETCOMPRESS_CACHE when set), and tiny
image folders written with Pillow for the own-data tests: mixed sizes, modes and formats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    # A cache shared by every test of the session: the 60,000 JPEGs are decoded at most once.
    env = os.environ.get("NETCOMPRESS_CACHE")
    return env if env else str(tmp_path_factory.mktemp("netcompress-cache"))


@pytest.fixture(scope="session")
def cifar_bundle(cifar_archive: Path, data_cache_dir: str):
    import netcompress.data as ncd

    return ncd.load("cifar10", root=str(cifar_archive), cache_dir=data_cache_dir)


# (mode, format suffix, save options, (width, height)) cycled over the images of a folder
VARIANTS = [
    ("RGB", ".png", {}, (40, 30)),
    ("L", ".bmp", {}, (17, 50)),
    ("RGBA", ".png", {}, (64, 64)),
    ("RGB", ".jpg", {"quality": 95}, (300, 200)),
    ("RGB", ".webp", {"lossless": True}, (23, 23)),
    ("L", ".jpeg", {"quality": 95}, (16, 40)),
]


def gray_value(index: int) -> int:
    """The grey level of image ``index``: unique per image, 5 apart (JPEG noise stays below 2)."""
    return 15 + 5 * index


def write_image(path: Path, *, value: int, variant: int) -> None:
    mode, _, options, size = VARIANTS[variant % len(VARIANTS)]
    colour = {"L": value, "RGB": (value,) * 3, "RGBA": (value, value, value, 128)}[mode]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, **options)


def write_folder(root: Path, counts: dict[str, int], *, start: int = 0) -> dict[int, str]:
    """``root/<class>/<i>.<ext>`` with ``counts[class]`` images each; returns {grey value: class}."""
    written = {}
    index = start
    for cls, count in counts.items():
        for _ in range(count):
            suffix = VARIANTS[index % len(VARIANTS)][1]
            write_image(root / cls / f"img{index:03d}{suffix}", value=gray_value(index), variant=index)
            written[gray_value(index)] = cls
            index += 1
    return written


@pytest.fixture
def image_folder_writer():
    """``write_folder`` for tests: ``write(root, {"cat": 4, "dog": 3}) -> {grey value: class}``."""
    return write_folder
