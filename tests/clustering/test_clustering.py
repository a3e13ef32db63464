"""Weight clustering: k distinct values per layer, sharing kept through SGD and pickling,
the cluster loss by hand, packed files smaller than dense and loaded back exactly."""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.clustering import (
    ClusterLoss,
    ClusterPreserving,
    cluster_weights,
    kmeans_1d,
    load_clustered,
    pack_indices,
    save_clustered,
    strip_clustering,
    unpack_indices,
)
from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.core.methods import METHODS, MethodData


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _distinct(t: torch.Tensor) -> int:
    return torch.unique(t.detach()).numel()


def test_kmeans_1d_hand_example_and_exact_k():
    codebook, idx = kmeans_1d(torch.tensor([0.0, 0.1, 0.2, 5.0, 5.2, 9.0]), clusters=3)
    assert torch.allclose(codebook, torch.tensor([0.1, 5.1, 9.0])) and idx.tolist() == [0, 0, 0, 1, 1, 2]
    w = torch.randn(5000)
    for init in ("linear", "kmeans++"):
        codebook, idx = kmeans_1d(w, clusters=16, init=init)
        assert codebook.numel() == 16 and _distinct(codebook[idx]) == 16
        # every weight sits at its nearest centroid, and each centroid is the mean of its weights
        assert torch.equal((w[:, None] - codebook[None]).abs().argmin(1), idx)
        assert torch.allclose(codebook, torch.stack([w[idx == j].mean() for j in range(16)]), atol=1e-6)
    assert kmeans_1d(torch.tensor([1.0, 1.0, 2.0]), clusters=8)[0].tolist() == [1.0, 2.0]


def test_cluster_weights_k_values_per_layer_and_summary_numbers():
    model = Net()
    bias = model.conv.bias.detach().clone()
    summary = cluster_weights(model, clusters=16)
    for module in (model.conv, model.fc):
        assert _distinct(module.weight) == 16
        assert torch.equal(module.weight, module.weight_codebook[module.weight_indices.long()])
        assert module.weight_indices.dtype == torch.uint8
    assert torch.equal(model.conv.bias, bias)  # biases are not clustered
    conv, fc = summary["layers"]
    assert (conv["weights"], conv["bits"], fc["weights"]) == (216, 4, 2880)
    assert summary["compression_ratio"] == pytest.approx(32 * 3096 / (4 * 3096 + 2 * 16 * 32))
    assert summary["clustered_weight_bytes"] == (4 * 3096 + 2 * 16 * 32) // 8
    with pytest.raises(ConfigError, match="init='random'"):
        cluster_weights(model, init="random")


def test_sharing_survives_sgd_steps_with_momentum_and_pickling():
    torch.manual_seed(0)
    model = Net()
    cluster_weights(model, clusters=8, exclude=["conv"])
    indices = model.fc.weight_indices.clone()
    start = model.fc.weight_codebook.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 10, (16,))
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        model(x)  # the pre-hook re-snaps the stepped weights onto the moved centroids
        assert _distinct(model.fc.weight) == 8
        assert torch.equal(model.fc.weight, model.fc.weight_codebook[indices.long()])
    assert torch.equal(model.fc.weight_indices, indices)
    assert (model.fc.weight_codebook - start).abs().max().item() > 1e-4  # the centroids learned
    assert _distinct(model.conv.weight) == 216  # excluded layer untouched
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert torch.equal(again(x), model(x))
    clone = copy.deepcopy(model)
    opt = torch.optim.SGD(clone.parameters(), lr=0.1)
    F.cross_entropy(clone(x), y).backward()
    opt.step()
    clone(x)
    assert _distinct(clone.fc.weight) == 8  # the copy's hook still works


def test_cluster_preserving_hook_keeps_sharing_exact_under_adam():
    model = Net()
    cluster_weights(model, clusters=4)
    hook = ClusterPreserving()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        hook.after_backward(model)
        opt.step()
        # tied before any re-snap: equal gradients gave equal Adam updates
        assert _distinct(model.conv.weight) == 4 and _distinct(model.fc.weight) == 4


def test_cluster_loss_equals_hand_value_and_gradient():
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 0.4], [1.2, -0.3]]))
    hook = ClusterLoss(0.5, codebooks={"0": torch.tensor([1.0, 0.0])})
    base = torch.tensor(2.0, requires_grad=True)
    total = hook.loss(model, None, None, None, base)
    # nearest of {0, 1}: 0 -> 0, 0.4 -> 0, 1.2 -> 1, -0.3 -> 0: 0 + 0.16 + 0.04 + 0.09 = 0.29
    assert total.item() == pytest.approx(2.0 + 0.5 * 0.29, abs=1e-6)
    total.backward()
    assert torch.allclose(model[0].weight.grad, torch.tensor([[0.0, 0.4], [0.2, -0.3]]), atol=1e-6)
    assert hook.epoch_end(model, 0) == {"cluster_loss": pytest.approx(0.29)}
    # k-means centroids: two well separated groups give the squared spread around their means
    free = ClusterLoss(1.0, clusters=2)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 0.2], [5.0, 5.4]]))
    assert free.penalty(model).item() == pytest.approx(0.01 + 0.01 + 0.04 + 0.04, abs=1e-6)


@pytest.mark.parametrize("bits", [1, 3, 4, 5, 8, 9])
def test_pack_unpack_round_trip(bits):
    idx = torch.randint(0, 2**bits, (1001,))
    packed = pack_indices(idx, bits=bits)
    assert packed.numel() == math.ceil(1001 * bits / 8)
    assert torch.equal(unpack_indices(packed, bits=bits, count=1001), idx)


def test_saved_file_is_smaller_and_loads_back_exactly(tmp_path: Path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    torch.save(model, tmp_path / "dense.pt")
    cluster_weights(model, clusters=16)
    summary = save_clustered(model, tmp_path / "clustered.pt")
    dense_bytes = (tmp_path / "dense.pt").stat().st_size
    assert summary["size_bytes"] == (tmp_path / "clustered.pt").stat().st_size
    # 4-bit indices: 68,096 weights -> 34,048 bytes (+ biases, codebooks, structure) vs ~270 kB
    assert summary["size_bytes"] < 0.2 * dense_bytes
    loaded = load_clustered(tmp_path / "clustered.pt")
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(3, 256)
    assert torch.equal(loaded(x), model(x))
    assert model[0].weight.numel() == 65536  # saving did not empty the caller's model
    with pytest.raises(CheckpointError, match="holds pickled Python objects"):
        load_clustered(tmp_path / "dense.pt")  # a pickled module from elsewhere: refused unless trusted
    with pytest.raises(CheckpointError, match="not a clustered-model file"):
        load_clustered(tmp_path / "dense.pt", trust=True)
    (tmp_path / "clustered.pt.sig").write_text("0" * 64)  # a tampered signature: no longer loads by default
    with pytest.raises(CheckpointError, match="holds pickled Python objects"):
        load_clustered(tmp_path / "clustered.pt")


def test_strip_clustering_gives_plain_state_dict():
    model = Net()
    cluster_weights(model, clusters=16)
    assert strip_clustering(model) == 2
    assert not model.fc._forward_pre_hooks and "fc.weight_codebook" not in model.state_dict()
    fresh = Net()
    fresh.load_state_dict(model.state_dict())
    assert _distinct(fresh.fc.weight) == 16


def test_kmeans_step_writes_packed_file(tmp_path: Path):
    spec = METHODS.get("cluster/kmeans")
    cfg = spec.config.from_dict({"clusters": 4, "include": ["fc"]})
    ctx = MethodData(example_inputs=torch.randn(1, 3, 6, 6), out_dir=tmp_path, num_classes=10)
    result = spec.fn(Net(), cfg, ctx)
    assert _distinct(result.model.fc.weight) == 4 and result.summary["layers"][0]["bits"] == 2
    assert result.summary["size_bytes"] == (tmp_path / "clustered.pt").stat().st_size
    with pytest.raises(ConfigError, match="unknown key 'cluster'"):
        spec.config.from_dict({"cluster": 4})
