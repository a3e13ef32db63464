"""The ``tensors`` data set: .npy pairs, .npz and .pt files, read without running any code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import netcompress.data as ncd
from netcompress.core.errors import ConfigError, DataError, UntrustedCheckpointError


def _arrays(n: int = 40, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)  # sample i starts with 6 * i
    return x, np.arange(n, dtype=np.int64) % classes


def _ids(ds) -> list[int]:
    return [int(ds[i][0][0, 0].item()) // 6 for i in range(len(ds))]


def test_npy_pair_split_by_test_fraction(tmp_path):
    x, y = _arrays()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    bundle = ncd.load(
        "tensors", x=str(tmp_path / "x.npy"), y=str(tmp_path / "y.npy"), test_fraction=0.2, val_size=8
    )
    assert bundle.input_shape == (2, 3) and bundle.num_classes == 4
    assert bundle.split_sizes() == {"train": 24, "val": 8, "test": 8}
    ids = [_ids(ds) for ds in (bundle.train, bundle.val, bundle.test)]
    assert sorted(sum(ids, [])) == list(range(40))  # every sample once
    assert torch.bincount(bundle.test.labels, minlength=4).tolist() == [2, 2, 2, 2]
    for ds in (bundle.train, bundle.val, bundle.test):
        for i in range(len(ds)):
            sample, label = ds[i]
            assert label == (int(sample[0, 0]) // 6) % 4
    again = ncd.load(
        "tensors", x=str(tmp_path / "x.npy"), y=str(tmp_path / "y.npy"), test_fraction=0.2, val_size=8
    )
    assert _ids(again.test) == ids[2]


def test_npz_with_own_keys_and_test_arrays(tmp_path):
    x, y = _arrays()
    images = (np.arange(10 * 4) % 256).astype(np.uint8).reshape(10, 1, 2, 2)
    np.savez(tmp_path / "d.npz", images=x, labels=y, images_test=x[:10] + 0.5, labels_test=np.arange(10) % 4)
    keys = {"x": "images", "y": "labels", "x_test": "images_test", "y_test": "labels_test"}
    bundle = ncd.load("tensors", path=str(tmp_path / "d.npz"), keys=keys, val_fraction=0)
    assert bundle.split_sizes() == {"train": 40, "val": 0, "test": 10}
    assert bundle.info["split_from"] == "files"
    np.savez(tmp_path / "u8.npz", x=images, y=np.arange(10) % 2)
    scaled = ncd.load("tensors", path=str(tmp_path / "u8.npz"), val_fraction=0, test_fraction=0.2)
    pixels = torch.cat([scaled.train.inputs, scaled.test.inputs])
    assert pixels.dtype == torch.float32 and pixels.max().item() == pytest.approx(39 / 255)
    with pytest.raises(DataError, match=r"d.npz has no key 'x' for x; it holds 'images', 'images_test'"):
        ncd.load("tensors", path=str(tmp_path / "d.npz"))
    with pytest.raises(DataError, match=r"d.npz has 'images_test' but no key 'y_test'"):
        ncd.load(
            "tensors",
            path=str(tmp_path / "d.npz"),
            keys={"x": "images", "y": "labels", "x_test": "images_test"},
        )


def test_pt_dict_of_tensors_and_num_classes(tmp_path):
    x, y = _arrays(classes=3)
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "d.pt")
    bundle = ncd.load("tensors", path=str(tmp_path / "d.pt"), num_classes=5)
    assert bundle.num_classes == 5 and bundle.input_shape == (2, 3)
    with pytest.raises(DataError, match=r"d.pt \(key 'y'\): label 2 does not fit num_classes=2"):
        ncd.load("tensors", path=str(tmp_path / "d.pt"), num_classes=2)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pt_with_pickled_objects_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"x": _Payload(str(marker)), "y": [0, 1]}, fh, protocol=2)
    with pytest.raises(UntrustedCheckpointError, match=r"evil.pt holds pickled Python objects"):
        ncd.load("tensors", path=str(tmp_path / "evil.pt"))
    assert not marker.exists()
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object))
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    with pytest.raises(DataError, match=r"cannot read .*obj.npy as a numpy array"):
        ncd.load("tensors", x=str(tmp_path / "obj.npy"), y=str(tmp_path / "y.npy"))


def test_bad_shapes_and_labels_name_file_and_key(tmp_path):
    x, y = _arrays()
    np.savez(tmp_path / "short.npz", x=x, y=y[:-1])
    with pytest.raises(
        DataError, match=r"short.npz \(key 'x'\) has 40 samples but .*short.npz \(key 'y'\) has 39"
    ):
        ncd.load("tensors", path=str(tmp_path / "short.npz"))
    np.savez(tmp_path / "float.npz", x=x, y=y.astype(np.float32))
    with pytest.raises(
        DataError, match=r"float.npz \(key 'y'\): class labels must be integers, got dtype float32"
    ):
        ncd.load("tensors", path=str(tmp_path / "float.npz"))
    np.savez(tmp_path / "neg.npz", x=x, y=y - 1)
    with pytest.raises(DataError, match=r"neg.npz \(key 'y'\): class labels must be >= 0"):
        ncd.load("tensors", path=str(tmp_path / "neg.npz"))
    np.savez(tmp_path / "flat.npz", x=np.arange(40.0), y=y)
    with pytest.raises(DataError, match=r"flat.npz \(key 'x'\): inputs must be \(N, ...\)"):
        ncd.load("tensors", path=str(tmp_path / "flat.npz"))
    np.savez(tmp_path / "mismatch.npz", x=x, y=y, x_test=x[:4, :1], y_test=y[:4])
    with pytest.raises(DataError, match=r"key 'x_test'\) has samples of shape \(1, 3\)"):
        ncd.load("tensors", path=str(tmp_path / "mismatch.npz"))
    with pytest.raises(DataError, match=r"tensor file not found: .*nothing.npz"):
        ncd.load("tensors", path=str(tmp_path / "nothing.npz"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"cannot read .*junk.npz as a .npz archive"):
        ncd.load("tensors", path=str(tmp_path / "junk.npz"))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "give path"),
        ({"x": "x.npy"}, "give path"),
        ({"path": "d.npz", "x": "x.npy"}, "not both"),
        ({"path": "d.npy"}, "must be a .npz, .pt or .pth"),
        ({"path": "d.npz", "keys": {"inputs": "a"}}, "unknown role 'inputs'"),
        ({"x": "x.npy", "y": "y.npy", "x_test": "t.npy"}, "x_test and y_test"),
        ({"path": "d.npz", "num_classes": 1}, "num_classes=1"),
    ],
)
def test_bad_settings_are_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        ncd.config_for("tensors", **kw)
