"""Losses and metrics for what users bring besides class labels: segmentation maps (N, H, W) against
(N, C, H, W) logits with ignore_index, and multi-label 0/1 targets (N, C); chosen from the data or named
(``TrainConfig.loss``, a recipe step's ``loss:``), a wrong pairing a DataError naming the shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import ConfigError, DataError
from netcompress.evaluation import evaluate
from netcompress.training import FinetuneConfig, TrainConfig, fit
from netcompress.training.task_losses import TaskLoss


class Table(nn.Module):
    """Fixed outputs: sample i's logits are ``table[i]`` (the input is the sample index)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.table[index]


def test_segmentation_pixel_accuracy_and_miou_by_hand():
    # 1 image, 2 classes, 2x2 pixels; predictions [[0, 1], [1, 1]], truth [[0, 1], [0, ignore]]
    logits = torch.tensor([[[[2.0, -1.0], [-1.0, -1.0]], [[-2.0, 1.0], [1.0, 1.0]]]])
    maps = torch.tensor([[[0, 1], [0, 255]]])
    got = evaluate(Table(logits), [(torch.tensor([0]), maps)], task="segmentation", ignore_index=255)
    assert got["accuracy_metric"] == "pixel_accuracy"
    assert got["accuracy"] == pytest.approx(2 / 3)  # 3 pixels counted, 2 right
    # class 0: intersection 1, union 2 -> 0.5; class 1: intersection 1, union 2 -> 0.5
    assert got["miou"] == pytest.approx(0.5)
    want = F.cross_entropy(logits, maps, ignore_index=255)
    assert got["loss"] == pytest.approx(float(want))
    auto = evaluate(Table(logits), [(torch.tensor([0]), torch.tensor([[[0, 1], [0, 1]]]))])  # found from shapes
    assert auto["accuracy_metric"] == "pixel_accuracy" and auto["accuracy"] == pytest.approx(3 / 4)


def test_multilabel_exact_match_and_label_f1_by_hand():
    logits = torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
    targets = torch.tensor([[1, 0, 1], [1, 0, 0]])
    got = evaluate(Table(logits), [(torch.arange(2), targets)])
    assert got["accuracy_metric"] == "exact_match"
    assert got["accuracy"] == pytest.approx(1 / 2)
    # label 0: tp 2 -> f1 1; label 1: fp 1 -> f1 0; label 2: tp 1 -> f1 1
    assert got["label_f1"] == pytest.approx(2 / 3)
    assert got["loss"] == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, targets.float())))
    classic = evaluate(Table(logits), [(torch.arange(2), torch.tensor([0, 1]))])  # argmax: 0 and 0
    assert "accuracy_metric" not in classic and classic["accuracy"] == 0.5  # classifiers keep top-1


class TinySeg(nn.Module):
    def __init__(self, classes: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, classes, 3, padding=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _seg_batches(ignore: int, n: int = 3):
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        # constant over 2x2 blocks, so a stride-2 model (logits at 4x4) can predict the 8x8 maps
        x = F.interpolate(torch.randn(8, 2, 4, 4, generator=gen), scale_factor=2, mode="nearest")
        maps = torch.stack([x[:, 0], x[:, 1], -x[:, 0] - x[:, 1]], dim=1).argmax(dim=1)  # linearly separable
        maps[:, 0, :] = ignore  # a border to skip
        batches.append((x, maps))
    return batches


@pytest.mark.parametrize(("loss", "stride"), [("segmentation", 1), ("auto", 1), ("auto", 2)])
def test_fit_trains_a_segmenter_on_class_maps(loss, stride):
    torch.manual_seed(0)
    model, batches = TinySeg(stride=stride), _seg_batches(255)
    cfg = TrainConfig(epochs=6, lr=0.1, optimizer="adam", loss=loss, ignore_index=255, progress=False)
    history = fit(model, batches, val_loader=batches[:1], config=cfg)
    first, last = history.rows[0], history.rows[-1]
    assert last["acc_metric"] == "pixel_accuracy"
    assert last["train_loss"] < first["train_loss"]
    assert last["val_acc"] > 0.75  # (stride 2: logits at 4x4 resized to the 8x8 maps, as SegFormer's loss)
    again = evaluate(model, batches[:1], ignore_index=255)
    assert again["accuracy"] == pytest.approx(last["val_acc"]) and again["miou"] > 0.5


def test_fit_trains_a_multilabel_classifier_with_bce_from_the_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    targets = torch.stack([x[:, 0] > 0, x[:, 1] > 0, x[:, 0] + x[:, 2] > 0], dim=1).float()
    batches = [(x[i : i + 16], targets[i : i + 16]) for i in range(0, 64, 16)]
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        start = F.binary_cross_entropy_with_logits(model(batches[0][0]), batches[0][1])
    history = fit(model, batches[:1], config=TrainConfig(epochs=1, lr=0.0, progress=False))
    assert history.rows[0]["train_loss"] == pytest.approx(float(start))  # BCE, not cross entropy
    assert history.rows[0]["acc_metric"] == "exact_match"
    fit(model, batches, config=TrainConfig(epochs=15, lr=0.1, optimizer="adam", progress=False))
    scores = evaluate(model, batches)
    assert scores["accuracy"] > 0.8 and scores["label_f1"] > 0.9


def test_wrong_pairings_are_errors_naming_the_shapes():
    logits = torch.zeros(4, 3)
    with pytest.raises(DataError, match=r"loss segmentation needs .*returns \(4, 3\) and the targets are \(4,\)"):
        TaskLoss("segmentation")(logits, torch.zeros(4, dtype=torch.long))
    with pytest.raises(DataError, match=r"loss multilabel needs .*targets are \(4, 2\)"):
        TaskLoss("multilabel")(logits, torch.zeros(4, 2))
    with pytest.raises(DataError, match=r"loss multilabel needs .*0/1"):
        TaskLoss("multilabel")(logits, torch.full((4, 3), 0.5))
    with pytest.raises(DataError, match=r"class maps hold 7, outside the model's 3 classes.*ignore_index=-100"):
        TaskLoss("auto")(torch.zeros(2, 3, 4, 4), torch.full((2, 4, 4), 7))
    with pytest.raises(DataError, match=r"returns \(4, 3\), but the batch's targets are \(4, 1\)"):
        TaskLoss("cross_entropy")(logits, torch.zeros(4, 1, dtype=torch.long))
    model = TinySeg()
    with pytest.raises(DataError, match=r"loss multilabel needs .*returns \(8, 3, 8, 8\)"):
        fit(model, _seg_batches(0), config=TrainConfig(epochs=1, loss="multilabel", progress=False))


def test_loss_is_a_checked_config_key_of_every_training_step():
    assert FinetuneConfig.from_dict({"loss": "segmentation", "ignore_index": 255}).loss == "segmentation"
    with pytest.raises(ConfigError, match=r"loss='segmentaton' is not one of"):
        FinetuneConfig.from_dict({"loss": "segmentaton"})


def test_one_hot_float_rows_stay_cross_entropy():
    loss = TaskLoss("auto")
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(loss(logits, one_hot)) == pytest.approx(float(F.cross_entropy(logits, one_hot)))
    assert loss.task == "cross_entropy"
