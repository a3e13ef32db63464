"""evaluate() against hand-computed accuracy/loss, and layer_table() rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netcompress.core.errors import DataError, UnsupportedModelError
from netcompress.evaluation import count_macs, evaluate, layer_table


def _logits_and_labels() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(8, 3)
    labels = logits.argmax(dim=1).clone()
    labels[:3] = (labels[:3] + 1) % 3  # first three wrong, five right
    return logits, labels


def test_evaluate_matches_hand_computation() -> None:
    logits, labels = _logits_and_labels()
    model = nn.Sequential(nn.Identity(), nn.Dropout(0.5)).train()
    loader = DataLoader(TensorDataset(logits, labels), batch_size=3)  # batches of 3, 3, 2
    result = evaluate(model, loader)
    assert result["accuracy"] == 5 / 8
    assert result["num_samples"] == 8
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), abs=1e-6)
    assert model.training and model[1].training  # dropout was off during evaluation, back on now


def test_evaluate_max_batches() -> None:
    logits, labels = _logits_and_labels()
    result = evaluate(nn.Identity(), DataLoader(TensorDataset(logits, labels), batch_size=3), max_batches=1)
    assert result["num_samples"] == 3
    assert result["accuracy"] == 0.0


def test_evaluate_errors() -> None:
    empty = DataLoader(TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), batch_size=2)
    with pytest.raises(DataError, match="no samples"):
        evaluate(nn.Identity(), empty)
    with pytest.raises(DataError, match="inputs, labels"):
        evaluate(nn.Identity(), [torch.zeros(2, 3)])
    with pytest.raises(UnsupportedModelError, match=r"\(2, 3, 1\)"):
        evaluate(nn.Unflatten(1, (3, 1)), [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))])


def test_layer_table_rows() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )
    with torch.no_grad():
        model[4].weight[:, :64].zero_()
    x = torch.randn(1, 3, 8, 8)
    rows = layer_table(model, x)
    assert [r["name"] for r in rows] == ["0", "1", "2.0", "2.1", "3", "4"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["0"]["type"] == "Conv2d"
    assert by_name["0"]["in_shape"] == [[1, 3, 8, 8]] and by_name["0"]["out_shape"] == [[1, 8, 4, 4]]
    assert by_name["3"]["out_shape"] == [[1, 128]]
    assert by_name["2.0"]["params"] == 72 and by_name["2.0"]["macs"] == 8 * 16 * 9
    assert by_name["4"]["params"] == 1290 and by_name["4"]["nonzero"] == 1290 - 640
    assert by_name["4"]["sparsity"] == pytest.approx(640 / 1290)
    assert by_name["1"]["params"] == 0 and by_name["1"]["macs"] == 0
    assert {r["name"]: r["macs"] for r in rows if r["macs"]} == count_macs(model, x)[1]
