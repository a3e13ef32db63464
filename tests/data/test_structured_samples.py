"""Samples with several model inputs (tuples, dicts) and integer token ids, from a user's own data."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

import netcompress.data as ncd
from netcompress.core.errors import ConfigError, DataError

SOURCE = """
import numpy as np
import torch


class Listed(torch.utils.data.Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def pairs():
    return Listed([((torch.full((2,), float(i)), np.full((3,), i, dtype=np.float32)), i % 2) for i in range(20)])


def dicts():
    return Listed([{"input_ids": torch.full((4,), i), "labels": torch.tensor(i % 2)} for i in range(20)])


def unlabelled_dicts():
    return Listed([{"input_ids": torch.full((4,), i)} for i in range(20)])


def strings():
    return Listed([(("text", torch.zeros(2)), 0) for i in range(20)])
"""


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "structured.py").write_text(textwrap.dedent(SOURCE))
    return lambda fn: f"{tmp_path / 'structured.py'}:{fn}"


def test_tuple_inputs_stay_positional_and_arrays_become_tensors(spec):
    bundle = ncd.load("factory", factory=spec("pairs"), val_fraction=0)
    inputs, label = bundle.train[0]
    assert isinstance(inputs, tuple) and [type(t) for t in inputs] == [torch.Tensor, torch.Tensor]
    assert inputs[1].tolist() == [inputs[0][0].item()] * 3 and label == int(inputs[0][0].item()) % 2
    assert bundle.input_shape == (2,) and bundle.num_classes == 2
    batch_inputs, labels = next(iter(torch.utils.data.DataLoader(bundle.train, batch_size=4)))
    assert [tuple(t.shape) for t in batch_inputs] == [(4, 2), (4, 3)] and labels.shape == (4,)


def test_dict_samples_give_keyword_inputs_without_the_label(spec):
    bundle = ncd.load("factory", factory=spec("dicts"), val_fraction=0)
    inputs, label = bundle.test[0]
    assert list(inputs) == ["input_ids"] and inputs["input_ids"].dtype == torch.int64
    assert label == int(inputs["input_ids"][0]) % 2
    assert bundle.input_shape == (4,)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        ("unlabelled_dicts", "sample 0 is a dict without a 'labels' or 'label' key"),
        ("strings", "sample 0's input is a tuple holding Tensor, str; expected a tensor or numpy array"),
    ],
)
def test_bad_structured_samples_are_named(spec, fn, message):
    with pytest.raises(DataError, match=message):
        ncd.load("factory", factory=spec(fn))


def test_integer_tensor_inputs_become_int64_not_float(tmp_path):
    ids = np.arange(80, dtype=np.int32).reshape(20, 4) % 7
    np.savez(tmp_path / "t.npz", x=ids, y=np.arange(20) % 2)
    bundle = ncd.load("tensors", path=str(tmp_path / "t.npz"), val_fraction=0)
    sample = bundle.train[0][0]
    assert sample.dtype == torch.int64 and sample.tolist() in ids.tolist()
    np.savez(tmp_path / "u.npz", x=np.full((20, 4), 255, dtype=np.uint8), y=np.arange(20) % 2)
    assert ncd.load("tensors", path=str(tmp_path / "u.npz"), val_fraction=0).train[0][0].tolist() == [1.0] * 4


def test_non_finite_tensor_inputs_are_refused_naming_the_sample(tmp_path):
    x = np.random.default_rng(0).random((20, 4)).astype(np.float32)
    x[7, 2], x[11, 0] = np.nan, np.inf
    np.savez(tmp_path / "n.npz", x=x, y=np.arange(20) % 2)
    # before: accepted, and the first epoch turned every weight NaN (a model at chance, no error)
    with pytest.raises(
        DataError, match=r"n\.npz \(key 'x'\): 2 sample\(s\) hold NaN or infinite values \(first: sample 7\)"
    ):
        ncd.load("tensors", path=str(tmp_path / "n.npz"))


def test_tensors_with_named_inputs_give_keyword_batches(tmp_path):
    ids = np.arange(120).reshape(20, 6)  # unique rows: a row names its sample
    mask = np.ones((20, 6), dtype=np.int64)
    mask[:, 4:] = 0
    np.savez(tmp_path / "tok.npz", input_ids=ids, attention_mask=mask, labels=np.arange(20) % 2)
    bundle = ncd.load(
        "tensors",
        path=str(tmp_path / "tok.npz"),
        inputs=["input_ids", "attention_mask"],
        keys={"y": "labels"},
    )
    assert bundle.split_sizes() == {"train": 14, "val": 2, "test": 4}
    inputs, label = bundle.test[0]
    assert sorted(inputs) == ["attention_mask", "input_ids"] and inputs["input_ids"].dtype == torch.int64
    assert inputs["attention_mask"].tolist() == [1, 1, 1, 1, 0, 0]
    assert ids.tolist().index(inputs["input_ids"].tolist()) % 2 == label
    batch, labels = next(iter(torch.utils.data.DataLoader(bundle.train, batch_size=5)))
    assert {k: tuple(v.shape) for k, v in batch.items()} == {"input_ids": (5, 6), "attention_mask": (5, 6)}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"inputs": ["input_ids", "mask"], "keys": {"y": "labels"}},
            DataError,
            r"has no key 'mask'; it holds",
        ),
        (
            {"inputs": ["input_ids"]},  # token ids and no key y (embedding-style data)
            DataError,
            r"has no key 'y' for the class labels \(it holds 'input_ids', 'labels'\);"
            r" .* needs one integer label per sample .* the sentences data set",
        ),
        (
            {"inputs": ["input_ids"], "keys": {"x": "input_ids", "y": "labels"}},
            ConfigError,
            "give inputs or keys.x",
        ),
        ({"inputs": []}, ConfigError, "inputs names the arrays"),
    ],
)
def test_bad_named_inputs_are_named(tmp_path, kwargs, error, message):
    np.savez(tmp_path / "tok.npz", input_ids=np.zeros((10, 3), dtype=np.int64), labels=np.arange(10) % 2)
    with pytest.raises(error, match=message):
        ncd.load("tensors", path=str(tmp_path / "tok.npz"), **kwargs)
