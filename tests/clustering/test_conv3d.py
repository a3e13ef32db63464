"""Conv3d layers (MONAI's 3-D U-Net and SegResNet have no other weighted layer than Conv3d / ConvTranspose3d):
clustering, its fine-tune and the Deep-Compression file take them; ``ClusterLoss`` and ``factorize`` on a model
with nothing to select refuse by name (the loss crashed on an empty stack, the factorisation returned the model
unchanged with an empty summary)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.clustering import ClusterLoss, ClusterPreserving
from netcompress.core.errors import ConfigError
from netcompress.training import TrainConfig


class Video(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(2, 8, 3, padding=1)
        self.conv2 = nn.Conv3d(8, 8, 3, padding=1)
        self.up = nn.ConvTranspose3d(8, 4, 2, stride=2)
        self.head = nn.Conv3d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(torch.relu(self.conv2(torch.relu(self.conv1(x))))))


class OnlyTransposed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(2, 4, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class Linear(nn.Module):
    """A package's own ``Linear`` (PyG's): no nn.Linear, so not clustered, and named with its module."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


X = torch.randn(2, 2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
BATCHES = [(X, torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(1)))]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return Video()


def test_conv3d_clusters_keeps_k_values_through_a_fine_tune_and_the_file_round_trips(tmp_path):
    model = _model()
    s = nc.cluster_weights_(model, clusters=4)
    assert [r["name"] for r in s["layers"]] == ["conv1", "conv2", "head"]
    assert s["not_clustered"] == {"up": "ConvTranspose3d"}
    before = model.conv2.weight.detach().clone()
    nc.fit_(model, BATCHES, config=TrainConfig(epochs=1, lr=0.05, progress=False, weight_decay=0),
            loss_fn=nn.MSELoss(), hooks=[ClusterPreserving()])  # fmt: skip
    assert not torch.equal(before, model.conv2.weight)
    for layer in (model.conv1, model.conv2, model.head):
        assert torch.unique(layer.weight.detach()).numel() <= 4
    saved = nc.save_compressed(model, tmp_path / "m.ncz", example_inputs=X)
    back = nc.load_compressed(tmp_path / "m.ncz", allow_modules=["tests"])
    assert saved["compression_ratio"] > 1
    assert torch.equal(back(X), model(X))


def test_cluster_loss_covers_conv3d_and_refuses_a_model_with_nothing_to_select():
    model = _model()
    hook = ClusterLoss(1e-3, clusters=4)
    assert float(hook.penalty(model)) > 0 and sorted(hook.codebooks) == ["conv1", "conv2", "head"]
    with pytest.raises(ConfigError, match="ClusterLoss: no Linear/Conv1d/Conv2d/Conv3d layer selected in OnlyTransposed"):
        ClusterLoss(1e-3).penalty(OnlyTransposed())
    with pytest.raises(ConfigError, match="OnlyTransposed's weighted layers are ConvTranspose3d, not clustered"):
        nc.cluster_weights_(OnlyTransposed(), clusters=4)
    with pytest.raises(ConfigError, match=r"weighted layers are tests\.clustering\.test_conv3d\.Linear, not clustered"):
        nc.cluster_weights_(nn.Sequential(Linear()), clusters=4)


def test_factorize_conv3d_full_energy_is_exact_half_energy_is_smaller():
    model = _model()
    full, s = nc.factorize(model, energy=1.0, example_inputs=X)
    torch.testing.assert_close(full(X), model(X), rtol=1e-4, atol=1e-5)
    small, s = nc.factorize(model, energy=0.5, example_inputs=X)
    assert "conv2" in [r["name"] for r in s["layers"]]
    assert s["params_after"] < s["params_before"] == sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match="factorize: no Linear/Conv1d/Conv2d/Conv3d layer selected in OnlyTransposed"):
        nc.factorize(OnlyTransposed(), energy=0.5)
