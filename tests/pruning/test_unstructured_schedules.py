"""Pruning schedules: the cubic sparsity ramp, iterative rounds, gradual pruning inside ``fit``."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netcompress.core import ConfigError
from netcompress.pruning.iterative import IterativeConfig, prune_iterative, prune_one_shot
from netcompress.pruning.masks import MaskKeeper
from netcompress.pruning.neuron import prune_neurons_iterative
from netcompress.pruning.schedules import GradualConfig, GradualPruner, polynomial_sparsity, prune_gradual
from netcompress.pruning.unstructured import UnstructuredConfig

training = pytest.importorskip("netcompress.training")
if not hasattr(training, "fit"):
    pytest.skip("netcompress.training.fit has not landed yet", allow_module_level=True)
TrainConfig = training.TrainConfig


def _mlp() -> nn.Sequential:
    """8 -> 16 -> 4: 128 + 64 = 192 prunable weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True, generator=g)
    return train, DataLoader(TensorDataset(x[64:], y[64:]), batch_size=32)


def _fast(epochs: int = 1) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=0.05, progress=False, schedule="constant")


def test_polynomial_schedule_values():
    kw = {"initial_sparsity": 0.1, "final_sparsity": 0.9, "begin_step": 10, "end_step": 110}
    assert polynomial_sparsity(10, **kw) == pytest.approx(0.1)
    assert polynomial_sparsity(60, **kw) == pytest.approx(0.9 - 0.8 * 0.125)
    assert polynomial_sparsity(110, **kw) == pytest.approx(0.9)
    assert polynomial_sparsity(500, **kw) == pytest.approx(0.9) and polynomial_sparsity(0, **kw) == 0.1


def test_gradual_pruner_in_a_hand_written_loop():
    model = _mlp()
    pruner = GradualPruner(final_sparsity=0.75, end_step=8, frequency_steps=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seen = []
    for _ in range(10):
        opt.zero_grad()
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        pruner.after_step(model)
        seen.append(pruner.applied)
    # updates at steps 2, 4, 6, 8 to 0.75 * (1 - (1 - t/8)^3)
    expected = [0.75 * (1 - (1 - t / 8) ** 3) for t in (2, 4, 6, 8)]
    assert [u[0] for u in pruner.updates] == [2, 4, 6, 8]
    assert [u[1] for u in pruner.updates] == pytest.approx([round(e * 192) / 192 for e in expected], abs=1e-6)
    assert seen == sorted(seen) and pruner.updates[-1][1] == 0.75
    model(torch.randn(1, 8))
    assert int((model[0].weight == 0).sum() + (model[2].weight == 0).sum()) == 144
    state = pruner.state_dict()
    clone = GradualPruner(final_sparsity=0.75, end_step=8, frequency_steps=2)
    clone.load_state_dict(json.loads(json.dumps(state)))
    assert clone.step == 10 and clone.applied == 0.75
    buffer = io.BytesIO()
    torch.save(pruner, buffer)
    assert copy.deepcopy(pruner).updates == pruner.updates


def test_prune_gradual_with_fit_reaches_final_sparsity():
    model = _mlp()
    train, val = _loaders()
    s = prune_gradual(
        model,
        train,
        val_loader=val,
        config=GradualConfig(final_sparsity=0.8, epochs=3, ramp_fraction=0.5, frequency_steps=2),
        prune=UnstructuredConfig(scope="layer"),
        train_config=_fast(),
    )
    # 12 steps, ramp over the first 6: updates at 2, 4, 6; layer scope: round(.8*128)=102, round(.8*64)=51
    assert s["end_step"] == 6 and [u[0] for u in s["updates"][:3]] == [2, 4, 6]
    assert s["sparsity"] == 153 / 192 and s["per_layer"] == {"0": 102 / 128, "2": 51 / 64}
    rows = s["history"]
    # after epoch 0 (step 4): 0.8 * (1 - (1 - 4/6)^3) = 0.77037 -> round(98.6) + round(49.3) = 99 + 49
    assert len(rows) == 3 and [r["target_sparsity"] for r in rows] == [0.77037, 0.8, 0.8]
    assert [r["sparsity"] for r in rows] == [148 / 192, 153 / 192, 153 / 192] and 0.0 <= s["accuracy"] <= 1.0
    json.dumps(s)


def test_prune_iterative_rounds_follow_the_remaining_share():
    model = _mlp()
    train, val = _loaders()
    s = prune_iterative(
        model,
        train,
        val_loader=val,
        config=IterativeConfig(amount_per_round=0.5, rounds=3),
        train_config=_fast(),
    )
    assert [r["sparsity"] for r in s["rounds"]] == [0.5, 0.75, 0.875]
    assert [r["nonzero_params"] for r in s["rounds"]] == [96 + 20, 48 + 20, 24 + 20]
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["accuracy_pruned"] <= 1.0 for r in s["rounds"])
    assert [r["round"] for r in s["history"]] == [1, 2, 3] and "sparsity" in s["history"][0]
    json.dumps(s)


def test_one_shot_without_loader_only_prunes():
    model = _mlp()
    _, val = _loaders()
    s = prune_one_shot(model, prune=UnstructuredConfig(amount=0.25), val_loader=val)
    assert s["rounds"][0]["sparsity"] == 0.25 and s["history"] == []
    assert s["rounds"][0]["accuracy"] == s["rounds"][0]["accuracy_pruned"]


def test_neuron_pruning_in_rounds_with_finetuning():
    model = _mlp()
    train, val = _loaders()
    small, s = prune_neurons_iterative(
        model, val, train_loader=train, val_loader=val, amount_per_round=0.25, rounds=2, train_config=_fast()
    )
    assert [r["neurons"]["0"] for r in s["rounds"]] == [12, 9]  # 16 -> 16-4 -> 12-round(3.0)
    assert s["params_after"] == 8 * 9 + 9 + 9 * 4 + 4 and small[0].out_features == 9
    assert model[0].out_features == 16 and len(s["history"]) == 2


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: GradualConfig(final_sparsity=1.5), "final_sparsity"),
        (lambda: GradualConfig(final_sparsity=0.5, initial_sparsity=0.6), "initial_sparsity"),
        (lambda: IterativeConfig(rounds=0), "rounds"),
        (lambda: GradualPruner(final_sparsity=0.5, end_step=0), "end_step"),
    ],
)
def test_bad_schedule_arguments(make, named):
    with pytest.raises(ConfigError, match=named):
        make()


def test_mask_keeper_reports_sparsity_inside_fit():
    model = _mlp()
    train, _ = _loaders()
    prune_one_shot(model, prune=UnstructuredConfig(amount=0.5))
    history = training.fit(model, train, config=_fast(2), hooks=[MaskKeeper()])
    assert [r["sparsity"] for r in history.rows] == [0.5, 0.5]
    assert int((model[0].weight == 0).sum() + (model[2].weight == 0).sum()) == 96
