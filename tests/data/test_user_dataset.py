"""A user's own Dataset through a factory spec: ``data: {factory: "mydata.py:build", kwargs: {...}}``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import netcompress.data as ncd
from netcompress.core.errors import ConfigError, DataError
from netcompress.recipes import resolve_recipe

SOURCE = '''
import torch
from torch.utils.data import Dataset


class Numbers(Dataset):
    """Sample i is a (1, 4) tensor filled with i; its label is i % classes."""

    def __init__(self, n, classes, start=0, with_targets=False):
        self.ids = list(range(start, start + n))
        self.classes_count = classes
        if with_targets:
            self.targets = [i % classes for i in self.ids]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        i = self.ids[index]
        return torch.full((1, 4), float(i)), torch.tensor(i % self.classes_count)


def build(n=30, classes=3, with_targets=False):
    return Numbers(n, classes, with_targets=with_targets)


def build_split(n=20):
    return {"train": Numbers(n, 2), "test": Numbers(6, 2, start=100)}


def wrong_keys():
    return {"training": Numbers(4, 2)}


def not_pairs():
    return [torch.zeros(3), torch.zeros(3)]


def float_labels():
    return [(torch.zeros(2), 0.5), (torch.zeros(2), 1.0)]


def not_a_dataset():
    return 42
'''


@pytest.fixture
def spec(tmp_path: Path, request: pytest.FixtureRequest):
    name = f"userdata_{request.node.name.split('[')[0]}"
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(SOURCE))
    return lambda fn: f"{path}:{fn}"


def _ids(ds) -> list[int]:
    return [int(ds[i][0][0, 0]) for i in range(len(ds))]


@pytest.mark.parametrize("with_targets", [False, True])
def test_one_dataset_is_split_seeded_and_stratified(spec, with_targets):
    kw = {"factory": spec("build"), "kwargs": {"n": 30, "with_targets": with_targets}, "val_size": 6}
    bundle = ncd.load("factory", **kw)
    assert bundle.num_classes == 3 and bundle.input_shape == (1, 4)
    assert bundle.split_sizes() == {"train": 18, "val": 6, "test": 6}
    assert torch.bincount(bundle.test.labels, minlength=3).tolist() == [2, 2, 2]
    ids = [_ids(ds) for ds in (bundle.train, bundle.val, bundle.test)]
    assert sorted(sum(ids, [])) == list(range(30))
    for ds in (bundle.train, bundle.val, bundle.test):
        assert all(label == int(x[0, 0]) % 3 for x, label in (ds[i] for i in range(len(ds))))
    assert _ids(ncd.load("factory", **kw).test) == ids[2]
    assert _ids(ncd.load("factory", **kw, seed=5).test) != ids[2]
    x, y = next(iter(torch.utils.data.DataLoader(bundle.train, batch_size=5)))
    assert tuple(x.shape) == (5, 1, 4) and y.dtype == torch.int64


def test_train_and_test_dict_and_given_num_classes(spec):
    bundle = ncd.load("factory", factory=spec("build_split"), num_classes=4, val_fraction=0.25)
    assert bundle.split_sizes() == {"train": 15, "val": 5, "test": 6}
    assert bundle.num_classes == 4 and _ids(bundle.test) == list(range(100, 106))
    with pytest.raises(DataError, match=r"userdata_.*\.py:build: label 2 does not fit num_classes=2"):
        ncd.load("factory", factory=spec("build"), num_classes=2)


@pytest.mark.parametrize(
    ("fn", "error", "message"),
    [
        (
            "wrong_keys",
            DataError,
            r"returned a dict with keys \['training'\]; expected exactly 'train' and 'test'",
        ),
        ("not_pairs", DataError, r"sample 0 is a Tensor; expected an \(input, label\) pair"),
        ("float_labels", DataError, r"class labels must be integers, got dtype float64"),
        ("not_a_dataset", DataError, r"returned a int, not a Dataset"),
        ("missing", ConfigError, r"has no callable named 'missing'"),
    ],
)
def test_bad_factories_are_named(spec, fn, error, message):
    with pytest.raises(error, match=message) as info:
        ncd.load("factory", factory=spec(fn))
    assert "userdata_test_bad_factories_are_named" in str(info.value)


def test_factory_kwargs_rejected_by_the_function_name_the_spec(spec):
    with pytest.raises(ConfigError, match=r"rejected its keyword arguments \['colour'\]"):
        ncd.load("factory", factory=spec("build"), kwargs={"colour": 1})


def test_recipe_data_block_needs_no_name(spec):
    recipe = {
        "model": {"name": "mlp", "in_features": 4, "hidden": [8], "num_classes": 3},
        "data": {"factory": spec("build"), "kwargs": {"n": 30}, "batch_size": 8},
        "steps": [{"op": "train", "method": "supervised", "epochs": 1}],
    }
    resolved = resolve_recipe(recipe)
    assert resolved["data"]["name"] == "factory" and resolved["data"]["kwargs"] == {"n": 30}
    recipe["data"]["test_fractoin"] = 0.3
    with pytest.raises(ConfigError, match=r"unknown key 'test_fractoin' in data set 'factory'"):
        resolve_recipe(recipe)
