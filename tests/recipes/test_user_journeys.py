"""A new user's own model and data through a recipe: what runs, and what stops with one line before any folder.

Each case is a defect found in session 11's user journeys (benchmarks/RELIABILITY.md, "User journeys, session 11").
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from netcompress.core.errors import ConfigError
from netcompress.core.model_check import check_model_on_data, describe_inputs
from netcompress.recipes import run_recipe

MODELS = '''
import torch
from torch import nn
from torch.utils.data import Dataset


class TwoInputs(nn.Module):
    """An image and a feature vector: called as model(image, features)."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.side = nn.Linear(5, 8)
        self.head = nn.Linear(16, num_classes)

    def forward(self, image, features):
        return self.head(torch.cat([self.conv(image), torch.relu(self.side(features))], 1))


class Tokens(nn.Module):
    """Token ids -> embedding -> mean -> classes, called with keywords (input_ids=..., mask=...)."""

    def __init__(self, num_classes=2, vocab=50):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, input_ids, mask=None):
        h = self.emb(input_ids)
        if mask is not None:
            h = h * mask.unsqueeze(-1)
        return self.head(h.mean(1))


def two_inputs(num_classes=3):
    return TwoInputs(num_classes)


def tokens(num_classes=2):
    return Tokens(num_classes)


def flat(num_classes=3, features=3 * 8 * 8):
    return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))


class Pairs(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        self.image = torch.randn(n, 3, 8, 8, generator=g) + self.y.view(-1, 1, 1, 1)
        self.features = torch.randn(n, 5, generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return (self.image[i], self.features[i]), int(self.y[i])


class Dicts(Dataset):
    """Hugging Face style samples: keyword inputs and the class under 'labels'."""

    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 50, (n, 6), generator=g)
        self.y = (self.ids[:, 0] >= 25).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "mask": torch.ones(6), "labels": self.y[i]}


def pairs(n=60):
    return {"train": Pairs(n, 0), "test": Pairs(n // 3, 1)}


def dicts(n=60):
    return Dicts(n)
'''


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    (tmp_path / "usercode.py").write_text(textwrap.dedent(MODELS))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _recipe(model: dict, data: dict, steps: list[dict]) -> dict:
    return {
        "name": "user",
        "seed": 0,
        "model": model,
        "data": {"batch_size": 8, "calib_batches": 2, **data},
        "steps": steps,
        "evaluate": {"latency": False},
        "report": {"plots": False},
    }


def test_factory_data_with_tuple_inputs_trains_and_prunes_channels(user_project):
    recipe = _recipe(
        {"factory": "usercode.py:two_inputs"},
        {"factory": "usercode.py:pairs", "kwargs": {"n": 60}},
        [
            {"op": "train", "method": "supervised", "epochs": 2, "lr": 0.05, "progress": False},
            {"op": "prune", "method": "channel", "ratio": 0.5},
        ],
    )
    result = run_recipe(recipe, out_dir=user_project / "run", progress=False)
    trained, pruned = result.stages[1], result.stages[2]
    # conv 3->8 (216 + 8) + BN (16) + side 5->8 (40 + 8) + head 16->3 (48 + 3) = 339
    assert trained["params"] == 339
    # half of each branch's outputs go: conv 3->4 (108 + 4) + BN (8) + side 5->4 (20 + 4) + head 8->3 (24 + 3)
    assert pruned["params"] == 171
    assert trained["accuracy"] > 0.5  # chance is 1/3: the inputs reach the model in the right order


def test_factory_data_with_dict_samples_and_token_ids(user_project):
    recipe = _recipe(
        {"factory": "usercode.py:tokens"},
        {"factory": "usercode.py:dicts", "kwargs": {"n": 60}, "test_fraction": 0.25},
        [{"op": "train", "method": "supervised", "epochs": 1, "lr": 0.05, "progress": False}],
    )
    recipe["export"] = {"onnx": True}
    recipe["evaluate"] = {"latency": True, "batch_sizes": [1, 3], "repeats": 2}
    result = run_recipe(recipe, out_dir=user_project / "run", progress=False)
    assert [s["name"] for s in result.stages] == ["initial", "train/supervised", "onnx fp32 (ORT)"]
    assert result.stages[1]["params"] == 50 * 8 + 8 * 2 + 2
    # before: timing the ONNX model sliced the dict of inputs like a tensor (TypeError: unhashable type: 'slice')
    onnx = result.stages[2]
    assert onnx["accuracy"] == result.stages[1]["accuracy"]
    assert onnx["latency_ms"] > 0 and onnx["latency_b3_ms"] > 0


def test_integer_tensors_stay_token_ids(user_project):
    ids = np.random.default_rng(0).integers(0, 50, (40, 6)).astype(np.int32)
    np.savez(user_project / "tokens.npz", input_ids=ids, labels=(ids[:, 0] >= 25).astype(np.int64))
    recipe = _recipe(
        {"factory": "usercode.py:tokens"},
        {"name": "tensors", "path": "tokens.npz", "keys": {"x": "input_ids", "y": "labels"}},
        [{"op": "prune", "method": "l1_unstructured", "amount": 0.5}],
    )
    result = run_recipe(recipe, out_dir=user_project / "run", progress=False)
    assert result.stages[1]["nonzero_params"] < result.stages[0]["nonzero_params"]


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            "usercode.py:flat",  # expects 3x8x8 = 192 features; the digits are 1x8x8
            "model.factory usercode.py:flat fails on one sample of data digits (inputs float32 (1, 1, 8, 8)): "
            "RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x64 and 192x3)",
        ),
        (
            "usercode.py:tokens",  # an embedding given float pixels
            "model.factory usercode.py:tokens fails on one sample of data digits (inputs float32 (1, 1, 8, 8)): "
            "RuntimeError: Expected tensor for argument #1 'indices'",
        ),
    ],
)
def test_a_model_that_does_not_take_the_data_stops_before_any_folder(user_project, factory, message):
    recipe = _recipe({"factory": factory}, {"name": "digits"}, [{"op": "prune", "method": "l1_unstructured"}])
    with pytest.raises(ConfigError) as info:
        run_recipe(recipe, progress=False)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert not (user_project / "runs").exists()


@pytest.mark.parametrize("outputs", [3, 12])
def test_class_count_mismatch_is_refused(user_project, outputs):
    recipe = _recipe(
        {"factory": "usercode.py:flat", "kwargs": {"num_classes": outputs, "features": 64}},
        {"name": "digits"},
        [{"op": "train", "method": "supervised", "epochs": 1}],
    )
    with pytest.raises(
        ConfigError, match=rf"gives {outputs} class scores per sample but data digits has 10 classes"
    ):
        run_recipe(recipe, progress=False)
    assert not (user_project / "runs").exists()


def test_check_model_on_data_names_inputs_and_restores_mode():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2))
    model.train()
    check_model_on_data(model, torch.randn(1, 4), num_classes=2, model_name="m")  # batch of 1 in eval: fine
    assert model.training
    check_model_on_data(model, torch.randn(1, 4), num_classes=0, model_name="m")  # no classes: not checked
    inputs = (torch.zeros(1, 3), {"ids": torch.zeros(1, 5, dtype=torch.long)})
    assert describe_inputs(inputs) == "(float32 (1, 3), {ids: int64 (1, 5)})"


def test_a_clustered_stage_is_sized_by_its_codebook_file(tmp_path):
    import netcompress as nc
    from netcompress.clustering.storage import save_clustered
    from netcompress.recipes.stages import stored_size

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    nc.cluster_weights_(model, clusters=8)
    expected = save_clustered(model, tmp_path / "c.pt")["size_bytes"]
    # before: the stage showed the dense state dict plus codebooks and indices, bigger than the unclustered model
    assert stored_size(model) == {"stored_bytes": expected, "stored_format": "clustered"}
    assert expected < 0.5 * (64 * 64 + 64 * 4) * 4


def test_a_read_only_output_folder_stops_the_run_before_any_work(tmp_path, monkeypatch):
    import os

    read_only = tmp_path / "shared"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(  # chmod does not stop root: stand in for a read-only mount
        "netcompress.recipes.run_folder.os.access",
        lambda p, mode: False if str(p) == str(read_only) else real_access(p, mode),
    )
    monkeypatch.setattr(  # the data must not even be loaded
        "netcompress.data.load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("data loaded"))
    )
    recipe = _recipe(
        {"name": "digits_cnn"}, {"name": "digits"}, [{"op": "prune", "method": "l1_unstructured"}]
    )
    with pytest.raises(ConfigError) as info:
        run_recipe(recipe, out_dir=read_only / "run" / "a", progress=False)
    assert str(info.value) == (
        f"cannot write run folder {read_only / 'run' / 'a'}: {read_only} is read-only (permissions or file "
        "system); choose another --out"
    )
    assert list(read_only.iterdir()) == []


def test_one_class_data_and_the_class_count_hint():
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ConfigError, match="^data d holds one class only"):
        check_model_on_data(model, torch.randn(1, 4), num_classes=1, model_name="m", data_name="data d")
    with pytest.raises(ConfigError) as info:
        check_model_on_data(model, torch.randn(1, 4), num_classes=2, model_name="m", data_name="data d")
    assert str(info.value).endswith("give the data set num_classes: 3 (tensors, factory)")
    with pytest.raises(ConfigError) as info:
        check_model_on_data(model, torch.randn(1, 4), num_classes=4, model_name="m", data_name="data d")
    assert str(info.value).endswith("(e.g. model.kwargs.num_classes=4)")


def test_a_last_training_batch_of_one_with_batchnorm_is_refused_before_training(user_project):
    (user_project / "bn.py").write_text(
        "import torch\nfrom torch import nn\nfrom torch.utils.data import TensorDataset\n\n"
        "def build():\n    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))\n\n"
        "def data():\n    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))\n"
        "    y = (x[:, 0] > 0).long()\n    return {'train': TensorDataset(x[:17], y[:17]), 'test': TensorDataset(x[17:], y[17:])}\n"
    )
    recipe = _recipe(
        {"factory": "bn.py:build"},
        {"factory": "bn.py:data", "batch_size": 16, "val_fraction": 0},
        [{"op": "train", "method": "supervised", "epochs": 1, "progress": False}],
    )
    # before: "ValueError: Expected more than 1 value per channel when training" in the first epoch
    with pytest.raises(ConfigError) as info:
        run_recipe(recipe, progress=False)
    assert str(info.value) == (
        "the training split holds 17 samples = 1 batch(es) of 16 + 1, and the model's BatchNorm cannot train on a "
        "batch of one sample; choose another data.batch_size (e.g. 15)"
    )
    assert not (user_project / "runs").exists()
    recipe["data"]["batch_size"] = 15
    assert run_recipe(recipe, progress=False).stages[1]["name"] == "train/supervised"
    recipe["steps"] = [{"op": "prune", "method": "l1_unstructured"}]  # no training: batch 16 is fine
    recipe["data"]["batch_size"] = 16
    assert run_recipe(recipe, progress=False).stages[1]["name"] == "prune/l1_unstructured"


def test_batchnorm_over_space_trains_on_one_sample_and_is_not_refused():
    from netcompress.core.model_check import check_last_batch

    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    check_last_batch(conv, torch.randn(1, 1, 8, 8), train_size=17, batch_size=16)  # 36 values per channel
    with pytest.raises(ConfigError, match="e.g. 15"):
        check_last_batch(torch.nn.BatchNorm1d(4), torch.randn(1, 4), train_size=17, batch_size=16)
