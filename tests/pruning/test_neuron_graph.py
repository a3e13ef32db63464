"""Neuron pruning (APoZ, mean activation) through the channel dependency graph: residual and concat models.

Coupled channels (a residual stage's stream: the stem or first block's shortcut and every block's
second conv) are one unit judged by all the activations that carry them; the pruned model equals
the unpruned one with the removed units' weights zeroed.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.models import create
from netcompress.pruning.neuron import CRITERIA, neuron_statistics, prune_neurons, prune_neurons_iterative


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    model = create("cifar_resnet20", num_classes=10)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # varied statistics so that channels fire at different rates
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=gen) * 0.5
            m.running_mean.data = torch.randn(m.num_features, generator=gen) * 0.1
            m.running_var.data = torch.rand(m.num_features, generator=gen) + 0.5
    return model.eval()


def _batches(n: int = 2, shape: tuple[int, ...] = (3, 8, 8)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    return [(torch.randn(4, *shape, generator=gen), torch.zeros(4, dtype=torch.long)) for _ in range(n)]


def _masked(model: nn.Module, keep: dict) -> nn.Module:
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, k in keep.items():
            if k["out"] is None:
                continue
            module = ref.get_submodule(name)
            removed = sorted(set(range(module.weight.shape[0])) - set(k["out"]))
            for p in (module.weight, getattr(module, "bias", None)):
                if p is not None and removed:
                    p[removed] = 0.0
    return ref.eval()


def _resnet20_params(s: dict) -> int:
    """ResNet-20's parameter count from the stream widths and each block's inner width."""
    width = {name: row["neurons_after"] for name, row in s["layers"].items()}
    streams = [width["conv1"], width["layer2.0.conv2"], width["layer3.0.conv2"]]
    total, c_in = 3 * streams[0] * 9 + 2 * streams[0], streams[0]
    for stage, c_out in enumerate(streams, start=1):
        for block in range(3):
            mid = width[f"layer{stage}.{block}.conv1"]
            total += c_in * mid * 9 + 2 * mid + mid * c_out * 9 + 2 * c_out
            if c_in != c_out or (stage > 1 and block == 0):
                total += c_in * c_out + 2 * c_out  # 1x1 downsample conv + BN
            c_in = c_out
    return total + streams[-1] * 10 + 10


@pytest.mark.parametrize("criterion", ["apoz", "mean_activation"])
def test_resnet20_residual_units_are_pruned_together_and_equal_masked(criterion: str) -> None:
    model = _resnet20()
    small, s = prune_neurons(model, _batches(), criterion=criterion, amount=0.25)
    # 3 residual streams + 9 inner block widths are pruned; the classifier (model output) is skipped
    assert len(s["layers"]) == 12 and s["skipped"] == {"fc": "they are the model's output"}
    assert s["layers"]["conv1"]["producers"] == [
        "conv1",
        "layer1.0.conv2",
        "layer1.1.conv2",
        "layer1.2.conv2",
    ]
    assert [s["layers"][n]["neurons_after"] for n in ("conv1", "layer2.0.conv2", "layer3.0.conv2")] == [
        12,
        24,
        48,
    ]
    assert all(
        s["layers"][f"layer{i}.{j}.conv1"]["neurons_after"] in (12, 24, 48)
        for i in (1, 2, 3)
        for j in range(3)
    )
    # one decision per stream: every layer on it keeps the same channels
    kept = s["kept_indices"]
    assert kept["conv1"]["out"] == kept["layer1.2.conv2"]["out"] == kept["layer2.0.conv1"]["in"]
    assert (
        kept["layer2.0.downsample.0"]["out"] == kept["layer2.2.conv2"]["out"] == kept["layer3.0.conv1"]["in"]
    )
    assert s["params_after"] == sum(p.numel() for p in small.parameters()) == _resnet20_params(s)
    assert s["params_before"] == 272_474 and s["params_after"] < s["params_before"]
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert (small(x) - _masked(model, kept)(x)).abs().max().item() < 1e-5


def test_stream_statistics_aggregate_every_activation_on_it() -> None:
    """Stage 1's stream is measured after the stem ReLU and after each of its 3 blocks' ReLUs."""
    model = _resnet20()
    batches = _batches()
    groups, stats = neuron_statistics(model, batches, layers=["conv1"])
    assert list(groups) == ["conv1"] and groups["conv1"].num_units == 16
    assert stats["conv1"].count.tolist() == [4 * 2 * 4 * 8 * 8] * 16  # 4 sites x 2 batches x 4 samples x 8x8
    # the zeros are those of the 4 ReLU outputs, counted by hand with hooks
    zeros = torch.zeros(16, dtype=torch.float64)

    def count(_module, _inputs, out) -> None:
        zeros.add_((out == 0).sum((0, 2, 3)).double())

    sites = (model.relu, model.layer1[0].relu2, model.layer1[1].relu2, model.layer1[2].relu2)
    hooks = [m.register_forward_hook(count) for m in sites]
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in hooks:
        h.remove()
    assert torch.equal(stats["conv1"].zeros, zeros)
    assert torch.allclose(CRITERIA.get("apoz")(stats["conv1"]), 1 - zeros / (4 * 2 * 4 * 64))


class ConcatNet(nn.Module):
    """Two branches concatenated, one ReLU after the concat; channels 1 of ``a`` and 2, 5 of ``b`` are dead."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.a, self.b = nn.Conv2d(6, 4, 3, padding=1), nn.Conv2d(6, 8, 1)
        self.mix, self.fc = nn.Conv2d(12, 5, 1), nn.Linear(5, 3)
        with torch.no_grad():
            for conv, dead in ((self.a, [1]), (self.b, [2, 5])):
                conv.weight.mul_(0.01)
                conv.bias.fill_(1.0)
                conv.weight[dead] = 0.0
                conv.bias[dead] = -1.0

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(F.relu(self.mix(x)).mean((2, 3)))


def test_concat_branches_are_pruned_by_their_own_apoz() -> None:
    model = ConcatNet().eval()
    small, s = prune_neurons(model, _batches(), criterion="apoz", amount=0.25, layers=["a", "b"])
    assert (s["layers"]["a"]["removed"], s["layers"]["b"]["removed"]) == ([1], [2, 5])
    assert s["layers"]["b"]["removed_importance"] == [0.0, 0.0]
    assert (small.a.out_channels, small.b.out_channels, small.mix.in_channels) == (3, 6, 9)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max().item() < 1e-5  # dead channels: the output is unchanged


def test_iterative_rounds_on_resnet20_shrink_each_round() -> None:
    model = _resnet20()
    small, s = prune_neurons_iterative(model, _batches(1), train_loader=None, rounds=2, amount_per_round=0.25)
    params = [r["params"] for r in s["rounds"]]
    assert params[0] < s["params_before"] and params[1] < params[0]
    assert s["rounds"][1]["neurons"]["conv1"] == 9  # 16 -> 12 -> 9
    assert small(torch.randn(2, 3, 8, 8)).shape == (2, 10)
