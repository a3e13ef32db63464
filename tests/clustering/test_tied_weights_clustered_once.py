"""Two layers sharing one weight Parameter: clustered once (through the first), reported once, the tie kept,
and kept through cluster-preserving fine-tuning, the packed file and the cluster loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.clustering import ClusterPreserving, cluster_weights_
from netcompress.clustering.regularizer import ClusterLoss, cluster_distance
from netcompress.clustering.storage import load_clustered, save_clustered
from netcompress.training import TrainConfig, fit


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight  # one Parameter, two layers (biases differ)
        self.c = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(torch.relu(self.a(x))))


def _model() -> Tied:
    torch.manual_seed(0)
    return Tied()


def test_a_shared_weight_is_clustered_and_counted_once():
    model = _model()
    tied_before = model.a.weight.detach().clone()
    summary = cluster_weights_(model, clusters=4)
    assert [r["name"] for r in summary["layers"]] == ["a", "c"]
    assert summary["layers"][0]["tied"] == ["b"] and "tied" not in summary["layers"][1]
    assert summary["clustered_weights"] == 64 + 24  # not 64 + 64 + 24
    dense, packed = (64 + 24) * 32, (64 * 2 + 4 * 32) + (24 * 2 + 4 * 32)
    assert summary["dense_weight_bytes"] == dense // 8
    assert summary["compression_ratio"] == pytest.approx(dense / packed)
    assert model.a.weight is model.b.weight
    assert torch.unique(model.a.weight).numel() == 4
    assert summary["layers"][0]["weight_mse"] == pytest.approx(
        float((model.a.weight.detach() - tied_before).double().pow(2).mean())
    )
    assert hasattr(model.a, "weight_codebook") and not hasattr(model.b, "weight_codebook")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fine_tuning_keeps_the_tie_and_the_four_shared_values(reduction):
    model = _model()
    cluster_weights_(model, clusters=4)
    codebook_before = model.a.weight_codebook.clone()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(3)]
    fit(
        model, batches, config=TrainConfig(epochs=2, lr=0.01, optimizer="sgd", progress=False),
        hooks=[ClusterPreserving(reduction)],
    )  # fmt: skip
    assert model.a.weight is model.b.weight
    values = torch.unique(model.a.weight.detach())
    assert values.numel() <= 4
    assert not torch.equal(model.a.weight_codebook, codebook_before)  # it trained
    assert torch.equal(torch.sort(values).values, torch.unique(model.a.weight_codebook[model.a.weight_indices.long()]))


def test_packed_file_round_trip_keeps_the_tie(tmp_path):
    model = _model()
    cluster_weights_(model, clusters=4)
    saved = save_clustered(model, tmp_path / "m.pt")
    assert list(saved["layers"]) == ["a", "c"]
    loaded = load_clustered(tmp_path / "m.pt")
    assert loaded.a.weight is loaded.b.weight
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_cluster_loss_penalises_a_shared_weight_once():
    model = _model()
    hook = ClusterLoss(1.0, clusters=4)
    hook.refresh(model)
    assert list(hook.codebooks) == ["a", "c"]
    want = cluster_distance(model.a.weight, hook.codebooks["a"]) + cluster_distance(model.c.weight, hook.codebooks["c"])
    assert float(hook.penalty(model).detach()) == pytest.approx(float(want.detach()))
