"""The validation split: held out of the training data, seeded, sized as configured, never augmented."""

from __future__ import annotations

import pytest
import torch

import netcompress.data as ncd
from netcompress.core.errors import ConfigError
from netcompress.data import validation_indices

SYNTH = {"num_samples": 200, "input_shape": [16], "num_classes": 4, "seed": 1}


def _rows(dataset) -> set[tuple[float, ...]]:
    return {tuple(row.tolist()) for row in dataset.inputs}


def test_split_is_disjoint_from_train_and_test_and_covers_the_training_data() -> None:
    whole = ncd.load("synthetic", **SYNTH, val_fraction=0)
    bundle = ncd.load("synthetic", **SYNTH)
    train, val, test = _rows(bundle.train), _rows(bundle.val), _rows(bundle.test)
    assert len(val) == 20 and not val & train and not val & test
    assert train | val == _rows(whole.train)  # held out of the training data, nothing lost
    assert torch.equal(bundle.test.inputs, whole.test.inputs)  # the test split is untouched


def test_digits_split_indices_are_the_held_out_rows() -> None:
    whole = ncd.load("digits", val_fraction=0)
    bundle = ncd.load("digits", val_seed=5)
    train_idx, val_idx = validation_indices(whole.train.labels, count=144, seed=5)
    assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(1437))
    assert torch.equal(bundle.val.images, whole.train.images[val_idx])
    assert torch.equal(bundle.train.images, whole.train.images[train_idx])


def test_same_seed_same_indices_other_seed_other_indices() -> None:
    labels = torch.arange(500) % 7
    a = validation_indices(labels, count=50, seed=3)
    b = validation_indices(labels, count=50, seed=3)
    c = validation_indices(labels, count=50, seed=4)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) and not torch.equal(a[1], c[1])
    assert torch.equal(ncd.load("digits").val.images, ncd.load("digits").val.images)
    assert not torch.equal(ncd.load("digits").val.images, ncd.load("digits", val_seed=1).val.images)
    # class-balanced: every class within one sample of count / classes
    counts = torch.bincount(labels[a[1]], minlength=7)
    assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize(
    ("settings", "sizes"),
    [
        ({}, (1293, 144)),
        ({"val_fraction": 0.2}, (1150, 287)),
        ({"val_size": 100}, (1337, 100)),
        ({"val_size": 100, "val_fraction": 0.3}, (1337, 100)),  # a count wins over a share
        ({"val_fraction": 0}, (1437, 0)),
    ],
)
def test_size_as_configured(settings, sizes) -> None:
    bundle = ncd.load("digits", **settings)
    assert (len(bundle.train), bundle.split_sizes()["val"]) == sizes
    assert bundle.info["num_val"] == sizes[1]


def test_zero_turns_the_split_off() -> None:
    bundle = ncd.load("synthetic", **SYNTH, val_size=0)
    assert bundle.val is None and bundle.val_loader() is None and len(bundle.train) == 200


def test_bad_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        ncd.load("digits", val_fraction=1.5)
    with pytest.raises(ConfigError, match="val_size"):
        ncd.load("digits", val_size=-1)
    with pytest.raises(ConfigError, match="leaves nothing"):
        ncd.load("synthetic", **SYNTH, val_size=200)


def test_validation_is_never_augmented_and_loads_in_a_fixed_order() -> None:
    bundle = ncd.load("digits", augment=True)
    assert bundle.train.augment and not bundle.val.augment
    loader = bundle.val_loader(eval_batch_size=50)
    first = torch.cat([x for x, _ in loader])
    again = torch.cat([x for x, _ in bundle.val_loader(eval_batch_size=50)])
    assert torch.equal(first, again) and first.shape == (144, 1, 8, 8)
    labels = torch.cat([y for _, y in loader])
    assert len(set(labels[:50].tolist())) == 10  # class-mixed: the first batch holds every class
