"""A recipe over a user's segmentation maps or multi-label rows (``tensors`` and ``factory`` data): the data
sets take the targets, the training step trains with the loss they call for (``loss:`` named, or found), and
every stage is scored by an honest metric that the row names (pixel accuracy + mIoU, exact match + label F1)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from netcompress.core.errors import DataError
from netcompress.data.splits import training_targets
from netcompress.recipes import run_recipe

CODE = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset


def seg(num_classes=3):
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))


def tagger(num_classes=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))


def seg_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 2, 6, 6, generator=g)
    maps = torch.stack([x[:, 0], x[:, 1], -x[:, 0] - x[:, 1]], dim=1).argmax(dim=1)
    return TensorDataset(x, maps)
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "user.py").write_text(textwrap.dedent(CODE))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 2, 6, 6)).astype(np.float32)
    maps = np.stack([x[:, 0], x[:, 1], -x[:, 0] - x[:, 1]], axis=1).argmax(axis=1)
    maps[:, 0, :] = 255  # the border is skipped
    np.savez(tmp_path / "seg.npz", x=x, y=maps)
    f = rng.standard_normal((80, 4)).astype(np.float32)
    tags = np.stack([f[:, 0] > 0, f[:, 1] > 0, f[:, 0] + f[:, 2] > 0], axis=1).astype(np.int64)
    np.savez(tmp_path / "tags.npz", x=f, y=tags)
    return tmp_path


def _recipe(model: str, data: dict, step: dict, ignore_index: int = -100) -> dict:
    return {
        "name": "targets",
        "seed": 0,
        "model": {"factory": f"user.py:{model}"},
        "data": {"batch_size": 10, "calib_batches": 1, **data},
        "steps": [{"op": "train", "method": "supervised", "epochs": 8, "lr": 0.05, "optimizer": "adam", **step}],
        "evaluate": {"latency": False, "ignore_index": ignore_index},
        "report": {"plots": False},
    }


@pytest.mark.parametrize(
    ("data", "step"),
    [
        ({"name": "tensors", "path": "seg.npz"}, {"loss": "segmentation", "ignore_index": 255}),
        ({"factory": "user.py:seg_data"}, {}),  # loss found from the (N, C, H, W) / (N, H, W) shapes
    ],
)
def test_segmentation_recipe_trains_and_scores_pixels(project, data, step):
    recipe = _recipe("seg", data, step, ignore_index=step.get("ignore_index", -100))
    result = run_recipe(recipe, out_dir=project / "run", progress=False)
    before, after = result.stages[0], result.stages[1]
    for row in (before, after):
        assert row["accuracy_metric"] == "pixel_accuracy" and 0 <= row["miou"] <= 1
    assert after["accuracy"] > 0.8 > before["accuracy"]
    assert after["miou"] > before["miou"]


def test_multilabel_recipe_trains_with_bce_and_scores_exact_match(project):
    recipe = _recipe("tagger", {"name": "tensors", "path": "tags.npz"}, {})
    result = run_recipe(recipe, out_dir=project / "run", progress=False)
    before, after = result.stages[0], result.stages[1]
    assert after["accuracy_metric"] == "exact_match"
    assert after["accuracy"] > 0.7 and after["label_f1"] > 0.85 and after["label_f1"] > before["label_f1"]


def test_targets_of_the_wrong_kind_name_the_shape():
    with pytest.raises(DataError, match=r"y.npy: targets of shape \(4, 3\) are read as multi-label rows .*found 2"):
        training_targets(np.array([[0, 1, 2]] * 4), where="y.npy")
    with pytest.raises(DataError, match=r"class maps \(N, H, W\) of integers, got dtype float32"):
        training_targets(np.zeros((4, 3, 3), dtype=np.float32), where="y.npy")
    assert training_targets(np.array([[0.0, 1.0], [1.0, 1.0]]), where="y")[1] == "multilabel"
    assert training_targets(np.array([[2], [0]]), where="y")[1] == "class"
