"""Network slimming: the BN L1 subgradient hook, the global |gamma| threshold, the rebuilt model."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.pruning.slimming import BNL1Penalty, bn_gammas, bn_sparsity, gamma_histogram, slim

X = torch.randn(2, 3, 8, 8)


def vgg(gammas1: list[float] | None = None, gammas2: list[float] | None = None) -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    with torch.no_grad():
        if gammas1 is not None:
            model[1].weight.copy_(torch.tensor(gammas1))
        if gammas2 is not None:
            model[5].weight.copy_(torch.tensor(gammas2))
    return model


def test_hook_adds_exactly_lambda_sign_gamma() -> None:
    model = vgg(gammas1=[0.5, -0.2, 0.1, -0.9, 0.3, 0.0, 0.7, -0.4])
    nn.functional.cross_entropy(model(X), torch.tensor([1, 2])).backward()
    before = {n: m.weight.grad.clone() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    conv_grad, bias_grad = model[0].weight.grad.clone(), model[1].bias.grad.clone()
    BNL1Penalty(lambda_=1e-2).after_backward(model)
    expected1 = before["1"] + 1e-2 * torch.tensor([1.0, -1, 1, -1, 1, 0, 1, -1])
    assert torch.equal(model[1].weight.grad, expected1)
    assert torch.equal(model[5].weight.grad, before["5"] + 1e-2 * torch.sign(model[5].weight.detach()))
    assert torch.equal(model[0].weight.grad, conv_grad)  # only BN scales are penalised
    assert torch.equal(model[1].bias.grad, bias_grad)  # beta is not penalised


def test_hook_with_zero_lambda_changes_nothing_and_reports_sparsity() -> None:
    model = vgg(gammas1=[0.001, 0.5, 0.5, 0.5, 0.005, 0.5, 0.5, 0.5])
    nn.functional.cross_entropy(model(X), torch.tensor([1, 2])).backward()
    grad = model[1].weight.grad.clone()
    hook = BNL1Penalty(lambda_=0.0, threshold=0.01)
    hook.after_backward(model)
    assert torch.equal(model[1].weight.grad, grad)
    row = hook.epoch_end(model, 0)
    assert row["bn_sparsity"] == pytest.approx(2 / 24)
    expected_mean = (0.001 + 0.005 + 6 * 0.5 + 16 * 1.0) / 24
    assert row["bn_gamma_mean_abs"] == pytest.approx(expected_mean, rel=1e-6)
    assert bn_sparsity(model, threshold=0.01) == pytest.approx(2 / 24)
    pickle.loads(pickle.dumps(hook))  # hooks travel inside pickled run checkpoints
    with pytest.raises(ConfigError, match="lambda_"):
        BNL1Penalty(lambda_=-1.0)


def test_hook_drives_gammas_to_zero_in_plain_sgd() -> None:
    model = vgg()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = BNL1Penalty(lambda_=2.0)
    for _ in range(4):
        optimiser.zero_grad()
        (model(X).sum() * 0).backward()  # no data gradient: the penalty alone moves gamma
        hook.after_backward(model)
        optimiser.step()
    # 4 steps of lr * lambda = 0.2 move every gamma from 1.0 to 0.2
    assert torch.allclose(model[1].weight, torch.full((8,), 0.2), atol=1e-6)


@pytest.mark.parametrize("percent", [0.25, 0.5, 0.9])
def test_slim_removes_the_expected_number_of_channels(percent: float) -> None:
    gen = torch.Generator().manual_seed(3)
    g1, g2 = torch.rand(8, generator=gen), torch.rand(16, generator=gen)
    model = vgg(g1.tolist(), g2.tolist())
    small, summary = slim(model, X, percent=percent)
    all_gammas = torch.cat([g1, g2]).sort().values
    threshold = all_gammas[int(24 * percent)].item()
    keep1 = max(int((g1 >= threshold).sum()), 1)
    keep2 = max(int((g2 >= threshold).sum()), 1)
    assert summary["threshold"] == pytest.approx(threshold)
    assert (small[0].out_channels, small[4].out_channels, small[9].in_features) == (keep1, keep2, keep2 * 4)
    assert summary["channels_pruned"] == 24 - keep1 - keep2
    assert summary["architecture"][0] == f"Conv2d(3, {keep1})"
    assert summary["architecture"][-1] == f"Linear({keep2 * 4}, 10)"
    assert summary["per_layer_lines"][0] == f"layer 1: total channel 8 / remaining channel {keep1}"
    assert small(X).shape == (2, 10)
    assert model[0].out_channels == 8  # input untouched


def test_slim_keeps_the_largest_gammas_and_one_channel_minimum() -> None:
    model = vgg([0.9, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.8], [0.001] * 16)
    small, summary = slim(model, X, percent=0.75)
    # threshold = sorted |gamma|[18] = 0.03: every conv2 gamma is below it, yet one channel survives
    assert small[4].out_channels == 1
    kept = small[1].weight.detach().sort().values
    assert torch.allclose(kept, torch.tensor([0.03, 0.04, 0.05, 0.06, 0.8, 0.9]))
    assert summary["bn_layers"][1] == {"name": "5", "total_channels": 16, "remaining_channels": 1}


def test_bn_gammas_and_histogram() -> None:
    model = vgg([0.5] * 8, [-0.25] * 16)
    gammas = bn_gammas(model)
    assert set(gammas) == {"1", "5"}
    assert isinstance(gammas["5"], np.ndarray) and gammas["5"].tolist() == [-0.25] * 16
    histogram = gamma_histogram(model, bins=4)
    assert sum(histogram["counts"]) == 24 and histogram["num_values"] == 24


def test_slim_without_batchnorm_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    with pytest.raises(UnsupportedModelError, match="no prunable BatchNorm"):
        slim(model, X)


def test_slim_sincnet_like_model_from_registry() -> None:
    models = pytest.importorskip("netcompress.models")
    if "sincnet" not in getattr(models, "list_models", list)():
        pytest.skip("sincnet not registered")
    model = models.create("sincnet", num_classes=10).eval()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data = torch.rand(m.num_features, generator=gen)  # trained-like, distinct scales
    x = torch.randn(2, *models.input_shape("sincnet"))
    small, summary = slim(copy.deepcopy(model), x, percent=0.1)
    assert small(x).shape == (2, 10)
    assert summary["params_after"] < summary["params_before"]
    assert summary["per_layer_lines"]
