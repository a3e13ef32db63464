"""CIFAR-10 readers on tiny generated sources: pickle batches, a JPEG tree and its .tar.gz.

These tests check how files are read, so they load with the validation split off
(``val_fraction=0``): the training split is every training image, in file order.
"""

from __future__ import annotations

import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import netcompress.data as ncd
from netcompress.core.errors import DataError

CLASSES = ["ant", "bee", "cow"]
COLOURS = {"ant": (200, 30, 30), "bee": (30, 200, 30), "cow": (30, 30, 200)}


def _write_pickles(folder: Path, *, per_batch: int = 6) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [i % 3 for i in range(per_batch)]
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
        written[name] = data
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}))
    return written


def _write_tree(root: Path, *, train: int = 4, test: int = 2) -> Path:
    for split, count in (("train", train), ("test", test)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (32, 32), COLOURS[cls]).save(root / split / cls / f"{i:04d}.jpg", quality=95)
    return root


def _tar(folder: Path, target: Path) -> Path:
    with tarfile.open(target, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return target


def test_pickle_folder_exact_pixels_and_meta(tmp_path: Path) -> None:
    written = _write_pickles(tmp_path / "cifar-10-batches-py")
    bundle = ncd.load("cifar10", val_fraction=0, root=str(tmp_path), augment=False)
    assert (len(bundle.train), len(bundle.test)) == (30, 6) and bundle.class_names == CLASSES
    assert bundle.info["format"] == "pickle" and bundle.num_classes == 3
    assert np.array_equal(bundle.train.images[6].numpy().reshape(-1), written["data_batch_2"][0])
    assert np.array_equal(bundle.test.images.numpy().reshape(6, -1), written["test_batch"])
    assert bundle.train.labels.tolist() == [i % 3 for i in range(6)] * 5


def test_jpeg_tree_folder_and_tar_give_the_same_arrays(tmp_path: Path) -> None:
    tree = _write_tree(tmp_path / "src" / "tiny-jpg")
    cache = tmp_path / "cache"
    from_folder = ncd.load(
        "cifar10", val_fraction=0, root=str(tmp_path / "src"), cache_dir=str(cache), augment=False
    )
    archive = _tar(tree, tmp_path / "tiny-jpg.tar.gz")
    from_tar = ncd.load("cifar10", val_fraction=0, root=str(archive), cache_dir=str(cache), augment=False)
    assert from_folder.info["format"] == "tree" and from_tar.info["format"] == "archive"
    for bundle in (from_folder, from_tar):
        assert (len(bundle.train), len(bundle.test)) == (12, 6) and bundle.class_names == CLASSES
        assert bundle.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert bundle.input_shape == (3, 32, 32)
    assert np.array_equal(from_folder.train.images.numpy(), from_tar.train.images.numpy())
    # Solid colours survive JPEG within a couple of levels.
    pixel = from_tar.test.images[2 * 2, :, 16, 16].numpy().astype(int)  # first test image of "cow"
    assert np.abs(pixel - np.array(COLOURS["cow"])).max() <= 3


def test_archive_is_cached_and_invalidated_by_mtime(tmp_path: Path) -> None:
    archive = _tar(_write_tree(tmp_path / "tiny-jpg"), tmp_path / "tiny-jpg.tar.gz")
    cache = tmp_path / "cache"
    first = ncd.load("cifar10", val_fraction=0, root=str(archive), cache_dir=str(cache))
    second = ncd.load("cifar10", val_fraction=0, root=str(archive), cache_dir=str(cache))
    assert first.info["cache_hit"] is False and second.info["cache_hit"] is True
    assert first.info["cache_path"] == second.info["cache_path"]
    assert np.array_equal(first.test.images.numpy(), second.test.images.numpy())
    assert first.info["mean"] == second.info["mean"]
    assert json.loads(json.dumps(second.info))["num_train"] == 12
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = ncd.load("cifar10", val_fraction=0, root=str(archive), cache_dir=str(cache))
    assert third.info["cache_hit"] is False and third.info["cache_path"] != first.info["cache_path"]
    assert not list(cache.rglob("*.tmp"))


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _tar(_write_tree(tmp_path / "tiny-jpg", train=1, test=1), tmp_path / "t.tar.gz")
    monkeypatch.setenv("NETCOMPRESS_CACHE", str(tmp_path / "envcache"))
    bundle = ncd.load("cifar10", val_fraction=0, root=str(archive))
    assert bundle.info["cache_path"].startswith(str(tmp_path / "envcache"))
    assert (Path(bundle.info["cache_path"]) / "meta.json").is_file()


def test_train_subset_balanced_and_seeded(tmp_path: Path) -> None:
    _write_pickles(tmp_path / "b", per_batch=30)  # 150 train images, 50 per class
    a = ncd.load("cifar10", val_fraction=0, root=str(tmp_path / "b"), train_subset=31, subset_seed=0)
    b = ncd.load("cifar10", val_fraction=0, root=str(tmp_path / "b"), train_subset=31, subset_seed=0)
    c = ncd.load("cifar10", val_fraction=0, root=str(tmp_path / "b"), train_subset=31, subset_seed=1)
    assert np.bincount(a.train.labels.numpy()).tolist() == [11, 10, 10] == a.info["train_per_class"]
    assert np.array_equal(a.train.images.numpy(), b.train.images.numpy())
    assert not np.array_equal(a.train.images.numpy(), c.train.images.numpy())
    assert len(a.test) == 30
    with pytest.raises(DataError, match="train_subset=151 exceeds the 150"):
        ncd.load("cifar10", val_fraction=0, root=str(tmp_path / "b"), train_subset=151)


def test_augmentation_keeps_shape_and_is_seeded(tmp_path: Path) -> None:
    _write_pickles(tmp_path / "b")
    bundle = ncd.load("cifar10", val_fraction=0, root=str(tmp_path / "b"), augment=True)
    plain = ncd.load("cifar10", val_fraction=0, root=str(tmp_path / "b"), augment=False)
    ncd_idx = list(range(30))
    torch.manual_seed(3)
    x1, y1 = bundle.train.batch(ncd_idx)
    torch.manual_seed(3)
    x2, _ = bundle.train.batch(ncd_idx)
    assert x1.shape == (30, 3, 32, 32) and torch.equal(x1, x2)
    assert not torch.equal(x1, plain.train.batch(ncd_idx)[0])
    assert torch.equal(y1, plain.train.labels[:30])
    assert torch.equal(bundle.test.batch([0])[0], plain.test.batch([0])[0])


def test_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tar.gz"
    with pytest.raises(DataError, match=f"does not exist: {missing}"):
        ncd.load("cifar10", val_fraction=0, root=str(missing))
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08 this is not gzip data" * 10)
    with pytest.raises(DataError, match=f"cannot read archive {corrupt}"):
        ncd.load("cifar10", val_fraction=0, root=str(corrupt), cache_dir=str(tmp_path / "c"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"CIFAR-10 folder {tmp_path / 'empty'} has neither"):
        ncd.load("cifar10", val_fraction=0, root=str(tmp_path / "empty"))
    tree = _write_tree(tmp_path / "bad", train=1, test=1)
    (tree / "train" / "ant" / "0000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot decode image .*bad:train/ant/0000.jpg"):
        ncd.load("cifar10", val_fraction=0, root=str(tree), cache_dir=str(tmp_path / "c"))
    odd = _write_tree(tmp_path / "odd", train=1, test=1)
    Image.new("RGB", (16, 16)).save(odd / "test" / "cow" / "0009.jpg")
    with pytest.raises(DataError, match="odd:test/cow/0009.jpg is 16x16"):
        ncd.load("cifar10", val_fraction=0, root=str(odd), cache_dir=str(tmp_path / "c"))


def test_truncated_archive_is_a_data_error(tmp_path: Path) -> None:
    archive = _tar(_write_tree(tmp_path / "t", train=2, test=1), tmp_path / "t.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"cannot read archive {archive}"):
        ncd.load("cifar10", val_fraction=0, root=str(archive), cache_dir=str(tmp_path / "c"))


def test_pickles_inside_a_tar(tmp_path: Path) -> None:
    written = _write_pickles(tmp_path / "cifar-10-batches-py")
    archive = _tar(tmp_path / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    bundle = ncd.load("cifar10", val_fraction=0, root=str(archive), cache_dir=str(tmp_path / "c"))
    assert bundle.info["content"] == "pickle" and len(bundle.train) == 30
    assert np.array_equal(bundle.test.images.numpy().reshape(6, -1), written["test_batch"])


def test_missing_default_root_lists_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETCOMPRESS_DATA", str(tmp_path))
    with pytest.raises(DataError, match=f"no CIFAR-10 data found.*{tmp_path / 'cifar10-jpg.tar.gz'}"):
        ncd.load("cifar10", val_fraction=0)
    _write_pickles(tmp_path / "cifar-10-batches-py")
    assert len(ncd.load("cifar10", val_fraction=0).train) == 30


def test_corrupt_pickle_names_the_batch(tmp_path: Path) -> None:
    _write_pickles(tmp_path / "b")
    (tmp_path / "b" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"cannot read CIFAR-10 batch {tmp_path / 'b' / 'data_batch_3'}"):
        ncd.load("cifar10", val_fraction=0, root=str(tmp_path / "b"))
