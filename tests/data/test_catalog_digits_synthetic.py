"""Catalog errors, the embedded digits set and the synthetic set."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import netcompress.data as ncd
from netcompress.core.errors import ConfigError


def test_list_names_every_registered_set() -> None:
    assert ncd.list() == [
        "cifar10",
        "digits",
        "factory",
        "fsdd",
        "image_folder",
        "sentences",
        "synthetic",
        "tensors",
    ]


def test_unknown_name_and_unknown_key_are_named() -> None:
    with pytest.raises(ConfigError, match="'digitz'.*Did you mean 'digits'"):
        ncd.load("digitz")
    with pytest.raises(ConfigError, match="unknown key 'image_sise'.*'digits'.*did you mean 'image_size'"):
        ncd.load("digits", image_sise=16)
    with pytest.raises(ConfigError, match="shift_pixels=9"):
        ncd.load("digits", shift_pixels=9)


def test_digits_counts_shapes_and_stratified_split() -> None:
    bundle = ncd.load("digits")
    # 1,437 training images, of which 10 % (144) are held out as the validation split.
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (1293, 144, 360)
    assert bundle.input_shape == (1, 8, 8) and bundle.num_classes == 10
    x, y = bundle.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    test_counts = np.bincount(bundle.test.labels.numpy(), minlength=10)
    # Stratified: every class keeps its share of 360/1797 of its images, within one image.
    splits = (bundle.train, bundle.val, bundle.test)
    all_counts = np.bincount(np.concatenate([s.labels.numpy() for s in splits]))
    assert all_counts.sum() == 1797
    assert np.abs(test_counts - all_counts * 360 / 1797).max() <= 1.0
    # Normalised with the (whole) training split's statistics.
    xs = torch.cat([bundle.train.images, bundle.val.images]) / 16.0
    xs = (xs - bundle.train.mean.view(1, -1, 1, 1)) / bundle.train.std.view(1, -1, 1, 1)
    assert abs(xs.mean().item()) < 1e-5 and abs(xs.std().item() - 1.0) < 1e-3


def test_digits_is_deterministic_and_split_seed_changes_it() -> None:
    a, b = ncd.load("digits"), ncd.load("digits")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    c = ncd.load("digits", split_seed=1)
    assert not torch.equal(a.test.images, c.test.images)


def test_digits_image_size_resizes() -> None:
    bundle = ncd.load("digits", image_size=16)
    assert bundle.input_shape == (1, 16, 16)
    assert bundle.test[0][0].shape == (1, 16, 16)


def test_digits_shift_augmentation_is_seeded_and_bounded() -> None:
    plain = ncd.load("digits")
    aug = ncd.load("digits", augment=True, shift_pixels=1)
    idx = list(range(64))
    torch.manual_seed(5)
    x1, _ = aug.train.batch(idx)
    torch.manual_seed(5)
    x2, _ = aug.train.batch(idx)
    x0, _ = plain.train.batch(idx)
    assert x1.shape == (64, 1, 8, 8) and torch.equal(x1, x2)
    assert not torch.equal(x1, x0)
    # Each augmented image equals the original shifted by at most one pixel (zero pixels fill in).
    fill = (0.0 - plain.info["mean"][0]) / plain.info["std"][0]
    padded = torch.nn.functional.pad(x0, (1, 1, 1, 1), value=fill)
    for i in range(64):
        shifts = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
        assert min((x1[i] - s).abs().max().item() for s in shifts) < 1e-5
    # Test split is never augmented.
    assert torch.equal(aug.test.batch([0, 1])[0], plain.test.batch([0, 1])[0])


def test_datasets_pickle_for_worker_processes() -> None:
    ds = ncd.load("digits").train
    back = pickle.loads(pickle.dumps(ds))
    assert torch.equal(back[7][0], ds[7][0]) and back[7][1] == ds[7][1]


def test_loaders_batch_through_getitems_and_shuffle_seeded() -> None:
    bundle = ncd.load("digits")
    train, test = bundle.loaders(batch_size=32, eval_batch_size=100, seed=3)
    x, y = next(iter(train))
    assert x.shape == (32, 1, 8, 8) and y.dtype == torch.int64
    y_again = next(iter(bundle.loaders(batch_size=32, seed=3)[0]))[1]
    assert torch.equal(y, y_again)
    xs = torch.cat([b[0] for b in test])
    order = list(test.sampler)  # a fixed class-mixed order covering every test image once
    assert sorted(order) == list(range(360)) and order != list(range(360))
    assert xs.shape == (360, 1, 8, 8) and torch.equal(xs[:5], bundle.test.batch(order[:5])[0])
    ys = torch.cat([b[1] for b in test])
    assert len(set(ys[:100].tolist())) == 10  # the first batch already holds every class


def test_synthetic_is_seeded_balanced_and_learnable() -> None:
    a = ncd.load("synthetic", num_samples=200, input_shape=[16], num_classes=4, seed=1)
    b = ncd.load("synthetic", num_samples=200, input_shape=(16,), num_classes=4, seed=1)
    assert a.input_shape == (16,) and (len(a.train), len(a.val), len(a.test)) == (180, 20, 50)
    assert torch.equal(a.train.inputs, b.train.inputs)
    assert np.bincount(a.train.labels.numpy()).tolist() == [45, 45, 45, 45]
    assert np.bincount(a.val.labels.numpy()).tolist() == [5, 5, 5, 5]
    # Class-dependent means: a nearest-class-mean rule fitted on train classifies the test set.
    x, y = a.train.batch(range(180))
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    tx, ty = a.test.batch(range(50))
    accuracy = (torch.cdist(tx, means).argmin(1) == ty).float().mean().item()
    assert accuracy >= 0.9


def test_synthetic_rejects_bad_shape() -> None:
    with pytest.raises(ConfigError, match="input_shape"):
        ncd.load("synthetic", input_shape=(3, 0, 4))


def test_bundle_info_is_json_summary() -> None:
    import json

    for name, kwargs in (("digits", {}), ("synthetic", {"num_samples": 20, "input_shape": (2,)})):
        info = json.loads(json.dumps(ncd.load(name, **kwargs).info))
        assert info["num_train"] == {"digits": 1293, "synthetic": 18}[name]
        assert info["num_val"] == {"digits": 144, "synthetic": 2}[name]
