"""The ``image_folder`` data set on tiny generated folders: images of mixed sizes, modes and formats.

Every image is one solid grey level, unique per image, so each sample can be traced back to its
file after resizing: labels, splits and statistics are checked image by image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import netcompress.data as ncd
from netcompress.core.errors import ConfigError, DataError

COUNTS = {"cat": 10, "dog": 6, "emu": 4}  # sorted names: labels 0, 1, 2


def _values(ds) -> list[int]:
    """The grey level of each sample of an image dataset (checked solid: one value per image)."""
    images = ds.images.to(torch.int16)
    spread = (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))).max().item()
    assert spread <= 3  # solid images stay solid through resize and crop (JPEG noise aside)
    return [int(round(v / 5.0) * 5) for v in images.float().mean(dim=(1, 2, 3)).tolist()]


def _load(root: Path, tmp_path: Path, **kw):
    return ncd.load("image_folder", root=str(root), cache_dir=str(tmp_path / "cache"), **kw)


@pytest.mark.parametrize(
    ("kw", "shape"),
    [
        ({"image_size": 16}, (3, 16, 16)),
        ({"image_size": [12, 20]}, (3, 12, 20)),
        ({"image_size": 8, "grayscale": True}, (1, 8, 8)),
        ({"image_size": [10, 6], "resize": "stretch"}, (3, 10, 6)),
    ],
)
def test_mixed_sizes_and_modes_come_out_one_shape(tmp_path, image_folder_writer, kw, shape):
    image_folder_writer(tmp_path / "pets", COUNTS)
    bundle = _load(tmp_path / "pets", tmp_path, **kw)
    assert bundle.input_shape == shape and bundle.num_classes == 3
    for ds in (bundle.train, bundle.val, bundle.test):
        assert tuple(ds.images.shape[1:]) == shape and ds.images.dtype == torch.uint8
        x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
        assert tuple(x.shape) == (2, *shape) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_labels_follow_sorted_class_folders_and_every_image_lands_once(tmp_path, image_folder_writer):
    written = image_folder_writer(tmp_path / "pets", {"emu": 4, "cat": 10, "dog": 6})  # written unsorted
    bundle = _load(tmp_path / "pets", tmp_path, image_size=16)
    assert bundle.class_names == ["cat", "dog", "emu"]
    seen = []
    for ds in (bundle.train, bundle.val, bundle.test):
        for value, label in zip(_values(ds), ds.labels.tolist()):
            assert bundle.class_names[label] == written[value]
            seen.append(value)
    assert sorted(seen) == sorted(written)  # each image exactly once across train/val/test


def test_no_split_folders_stratified_seeded_split(tmp_path, image_folder_writer):
    image_folder_writer(tmp_path / "pets", COUNTS)
    kw = {"image_size": 8, "test_fraction": 0.2, "val_fraction": 0.25}
    bundle = _load(tmp_path / "pets", tmp_path, **kw)
    # test: round(0.2 * n) per class = 2, 1, 1; val: round(0.25 * 16) = 4 of the remaining 16
    assert bundle.split_sizes() == {"train": 12, "val": 4, "test": 4}
    assert torch.bincount(bundle.test.labels, minlength=3).tolist() == [2, 1, 1]
    assert bundle.info["split_from"] == "test_fraction"
    parts = [set(_values(ds)) for ds in (bundle.train, bundle.val, bundle.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    again = _load(tmp_path / "pets", tmp_path, **kw)
    assert [set(_values(ds)) for ds in (again.train, again.val, again.test)] == parts
    other = _load(tmp_path / "pets", tmp_path, **kw, seed=1)
    assert set(_values(other.test)) != parts[2]


def test_mean_std_from_training_split_only_or_as_given(tmp_path, image_folder_writer):
    image_folder_writer(tmp_path / "pets", COUNTS)
    bundle = _load(tmp_path / "pets", tmp_path, image_size=8)
    train = bundle.train.images.float() / 255.0
    expected_mean = train.mean(dim=(0, 2, 3))
    expected_std = train.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False)
    assert bundle.info["stats_from"] == "training split"
    assert torch.allclose(torch.tensor(bundle.info["mean"]), expected_mean, atol=1e-6)
    assert torch.allclose(torch.tensor(bundle.info["std"]), expected_std, atol=1e-6)
    everything = torch.cat([ds.images for ds in (bundle.train, bundle.val, bundle.test)]).float() / 255.0
    assert abs(everything.mean().item() - expected_mean[0].item()) > 1e-3  # the test would notice a leak
    for ds in (bundle.train, bundle.val, bundle.test):
        assert torch.allclose(ds.mean, expected_mean) and torch.allclose(ds.std, expected_std)
    x, _ = bundle.train[0]
    assert torch.allclose(
        x,
        (bundle.train.images[0].float() / 255 - expected_mean[:, None, None]) / expected_std[:, None, None],
        atol=1e-5,
    )
    given = _load(tmp_path / "pets", tmp_path, image_size=8, grayscale=True, mean=[0.5], std=[0.25])
    x, _ = given.test[0]
    assert torch.allclose(x, (given.test.images[0].float() / 255 - 0.5) / 0.25)
    assert given.info["stats_from"] == "config"
    with pytest.raises(ConfigError, match=r"mean=\[0.5\] needs 3 values.*image_folder"):
        _load(tmp_path / "pets", tmp_path, mean=[0.5], std=[0.2])


def test_split_folders_with_and_without_val(tmp_path, image_folder_writer):
    root = tmp_path / "tree"
    image_folder_writer(root / "train", {"a": 5, "b": 5})
    image_folder_writer(root / "test", {"a": 2, "b": 1}, start=10)
    bundle = _load(root, tmp_path, image_size=8, val_fraction=0.2)
    assert bundle.split_sizes() == {"train": 8, "val": 2, "test": 3}
    assert bundle.info["split_from"] == "folders"
    assert set(_values(bundle.test)) == {65, 70, 75}  # exactly the test folder's images
    image_folder_writer(root / "val", {"b": 3}, start=13)
    bundle = _load(root, tmp_path, image_size=8)
    assert bundle.split_sizes() == {"train": 10, "val": 3, "test": 3}
    assert bundle.val.labels.tolist() == [1, 1, 1]


def test_shorter_side_resize_then_centre_crop(tmp_path):
    # 60x20: red columns 0-14, green 15-44, blue 45-59. Scaled by 0.5 to 30x10 and cropped to the
    # middle 10 columns, only green remains; stretched to 10x10, all three colours do.
    img = np.zeros((20, 60, 3), dtype=np.uint8)
    img[:, :15] = (255, 0, 0)
    img[:, 15:45] = (0, 255, 0)
    img[:, 45:] = (0, 0, 255)
    for cls in ("a", "b"):
        (tmp_path / "wide" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(img).save(tmp_path / "wide" / cls / f"{i}.png")
            Image.fromarray(img.transpose(1, 0, 2).copy()).save(tmp_path / "wide" / cls / f"t{i}.png")
    for resize in ("shorter", "none"):
        bundle = _load(tmp_path / "wide", tmp_path, image_size=10, resize=resize, val_fraction=0)
        pixels = torch.cat([bundle.train.images, bundle.test.images])
        assert pixels[:, 1].min().item() == 255 and pixels[:, [0, 2]].max().item() == 0, resize
    stretched = _load(tmp_path / "wide", tmp_path, image_size=10, resize="stretch", val_fraction=0)
    assert (
        stretched.train.images[:, 0].max().item() == 255 and stretched.train.images[:, 2].max().item() == 255
    )
    with pytest.raises(DataError, match=r"wide/a/0.png is 60x20, smaller than image_size 32x32"):
        _load(tmp_path / "wide", tmp_path, image_size=32, resize="none")


def test_decoded_once_then_read_from_the_cache(tmp_path, image_folder_writer):
    image_folder_writer(tmp_path / "pets", COUNTS)
    first = _load(tmp_path / "pets", tmp_path, image_size=8)
    second = _load(tmp_path / "pets", tmp_path, image_size=8)
    assert (first.info["cache_hit"], second.info["cache_hit"]) == (False, True)
    assert torch.equal(first.train.images, second.train.images)
    assert _load(tmp_path / "pets", tmp_path, image_size=9).info["cache_hit"] is False
    image_folder_writer(tmp_path / "pets", {"dog": 1}, start=30)
    changed = _load(tmp_path / "pets", tmp_path, image_size=8)
    assert changed.info["cache_hit"] is False and sum(changed.split_sizes().values()) == 21
    nocache = ncd.load(
        "image_folder", root=str(tmp_path / "pets"), cache=False, cache_dir=str(tmp_path / "c2")
    )
    assert nocache.info["cache_hit"] is False and not (tmp_path / "c2").exists()


def test_user_mistakes_name_the_path(tmp_path, image_folder_writer):
    with pytest.raises(DataError, match=r"image folder not found: .*missing"):
        _load(tmp_path / "missing", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no class folders in .*empty"):
        _load(tmp_path / "empty", tmp_path)
    image_folder_writer(tmp_path / "pets", {"cat": 3, "dog": 3})
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("ignored")
    (tmp_path / "pets" / "cat" / ".hidden.jpg").write_bytes(b"ignored")
    assert sum(_load(tmp_path / "pets", tmp_path, image_size=4).split_sizes().values()) == 6
    (tmp_path / "pets" / "owl").mkdir()
    with pytest.raises(DataError, match=r"class folder .*pets/owl holds no images"):
        _load(tmp_path / "pets", tmp_path)
    (tmp_path / "pets" / "owl").rmdir()
    (tmp_path / "pets" / "dog" / "broken.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot decode image .*pets/dog/broken.jpg"):
        _load(tmp_path / "pets", tmp_path)
    (tmp_path / "pets" / "dog" / "broken.jpg").unlink()
    Image.new("RGB", (8, 8)).save(tmp_path / "pets" / "stray.png")
    with pytest.raises(DataError, match=r"pets holds images outside class folders \(stray.png\)"):
        _load(tmp_path / "pets", tmp_path)
    image_folder_writer(tmp_path / "tree" / "train", {"a": 2})
    with pytest.raises(DataError, match=r"tree has train/ but no test/"):
        _load(tmp_path / "tree", tmp_path)
    image_folder_writer(tmp_path / "tree" / "test", {"zebra": 1})
    with pytest.raises(DataError, match=r"tree/test/zebra is a class with no training images"):
        _load(tmp_path / "tree", tmp_path)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "root is required"),
        ({"root": "x", "image_size": [1, 2, 3]}, "image_size"),
        ({"root": "x", "image_size": 0}, "image_size=0"),
        ({"root": "x", "resize": "fit"}, "resize='fit'"),
        ({"root": "x", "test_fraction": 0.0}, "test_fraction=0.0"),
        ({"root": "x", "mean": [0.5, 0.5, 0.5]}, "give both mean and std"),
        ({"root": "x", "mean": [0.1] * 3, "std": [0.0] * 3}, "std="),
        ({"root": "x", "grayscale": "yes"}, "grayscale='yes'"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(kw, message):
    with pytest.raises(ConfigError, match=message):
        ncd.config_for("image_folder", **kw)
