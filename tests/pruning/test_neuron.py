"""Neuron pruning: APoZ / mean activation remove the right neurons, physically, with equal outputs."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netcompress.core import ConfigError, UnsupportedModelError
from netcompress.pruning.neuron import CRITERIA, neuron_statistics, prune_neurons
from netcompress.pruning.unstructured import prune_unstructured

DEAD = {"0": [1, 6], "2": [2]}


def _mlp_with_dead_neurons() -> nn.Sequential:
    """6 -> 8 -> 4 -> 3; neurons 1, 6 of layer 0 and 2 of layer 2 never fire (ReLU output 0)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        for idx, layer in ((0, model[0]), (2, model[2])):
            layer.weight.mul_(0.1)
            layer.bias.fill_(2.0)  # live neurons: always positive on |x| <= 1 inputs
            dead = DEAD[str(idx)]
            layer.weight[dead] = 0.0
            layer.bias[dead] = -1.0
    return model


def _loader(n: int = 48, shape: tuple[int, ...] = (6,)) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, *shape, generator=g) * 2 - 1
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=16)


def test_apoz_removes_exactly_the_dead_neurons_and_keeps_outputs():
    model = _mlp_with_dead_neurons()
    reference = copy.deepcopy(model.state_dict())
    small, s = prune_neurons(model, _loader(), criterion="apoz", amount=0.25)
    assert {k: v["removed"] for k, v in s["layers"].items()} == DEAD
    assert all(v == [0.0] * len(v) for v in (s["layers"][k]["removed_importance"] for k in DEAD))
    assert [small[0].out_features, small[2].in_features, small[2].out_features, small[4].in_features] == [
        6,
        6,
        3,
        3,
    ]
    # 6*8+8 + 8*4+4 + 4*3+3 = 107 -> 6*6+6 + 6*3+3 + 3*3+3 = 75
    assert (s["params_before"], s["params_after"]) == (107, 75)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for name, rows in DEAD.items():
            masked.get_submodule(name).weight[rows] = 0.0
            masked.get_submodule(name).bias[rows] = 0.0
    x = torch.rand(32, 6) * 2 - 1
    assert (small(x) - masked(x)).abs().max().item() < 1e-6
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())  # input untouched
    assert small is not model and model[0].out_features == 8


def test_apoz_statistics_are_exact():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model[0].bias.zero_()
    x = torch.tensor([[1.0, 1.0], [-1.0, 2.0], [2.0, -1.0], [-3.0, 4.0]])
    spans, stats = neuron_statistics(model, [x[:2], x[2:]])
    assert list(spans) == ["0"] and stats["0"].count.tolist() == [4.0, 4.0]
    assert stats["0"].zeros.tolist() == [2.0, 1.0]  # APoZ 0.5 and 0.25
    assert CRITERIA.get("mean_activation")(stats["0"]).tolist() == [0.75, 1.75]


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(8 * 3 * 3, 6)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.out(self.drop(F.relu(self.fc(x))))


def _randomise_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_conv_bn_flatten_linear_chain_equals_masked_original(criterion):
    torch.manual_seed(0)
    model = _ConvNet()
    _randomise_bn(model)
    small, s = prune_neurons(model, _loader(24, (3, 8, 8)), criterion=criterion, amount=0.25)
    removed = {k: v["removed"] for k, v in s["layers"].items()}
    assert [len(removed["features.0"]), len(removed["fc"])] == [2, 2]
    assert small.features[1].num_features == 6 and small.fc.in_features == 6 * 9
    # conv 3*6*9+6, bn 12, fc 54*4+4, out 4*2+2
    assert s["params_after"] == 168 + 12 + 220 + 10
    masked = copy.deepcopy(model)
    with torch.no_grad():
        rows = removed["features.0"]
        for t in (masked.features[0].weight, masked.features[0].bias, masked.features[1].weight):
            t[rows] = 0.0
        masked.features[1].bias[rows] = 0.0
        masked.fc.weight[removed["fc"]] = 0.0
        masked.fc.bias[removed["fc"]] = 0.0
    x = torch.randn(5, 3, 8, 8)
    assert (small.eval()(x) - masked.eval()(x)).abs().max().item() < 1e-5


def test_masks_are_sliced_with_the_neurons_and_keep_working():
    model = _mlp_with_dead_neurons()
    prune_unstructured(model, amount=0.5, scope="layer", include=["2", "4"])
    small, s = prune_neurons(model, _loader(), amount=0.25)
    assert s["masked_parameters"] == 2 and small[2].weight_mask.shape == (3, 6)
    assert torch.equal(small[2].weight_mask, model[2].weight_mask[[0, 1, 3]][:, [0, 2, 3, 4, 5, 7]])
    with torch.no_grad():
        small[2].weight.fill_(1.0)  # the mask hooks still zero the pruned weights
    x = torch.rand(4, 6)
    small(x)
    assert torch.equal(small[2].weight, small[2].weight_mask.float())
    buffer = io.BytesIO()
    torch.save(small, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), small(x))


def test_layers_restricts_and_output_layer_is_refused():
    small, s = prune_neurons(_mlp_with_dead_neurons(), _loader(), amount=0.25, layers=["2"])
    assert list(s["layers"]) == ["2"] and small[0].out_features == 8
    with pytest.raises(UnsupportedModelError, match="'4': they are the model's output"):
        prune_neurons(_mlp_with_dead_neurons(), _loader(), layers=["4"])


class _Cumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cumsum(torch.relu(self.a(x)), dim=1))


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if x.sum() > 0 else -self.a(x)


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (_Cumsum(), "function 'cumsum'"),
        (_DataDependent(), "traceable"),
    ],
)
def test_unsupported_models_raise_naming_the_op(model, named):
    with pytest.raises(UnsupportedModelError, match=named):
        prune_neurons(model, [torch.randn(3, 4)])


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"criterion": "apoz2"}, "criterion"), ({"amount": 1.5}, "amount"), ({"max_batches": 0}, "max_batches")],
)
def test_bad_arguments_raise_config_error(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        prune_neurons(_mlp_with_dead_neurons(), _loader(), **kwargs)


def test_empty_loader_is_an_error():
    with pytest.raises(ConfigError, match="at least one batch"):
        prune_neurons(_mlp_with_dead_neurons(), [])


def test_reinitialise_option_keeps_the_pruned_architecture_and_draws_fresh_seeded_weights():
    # E5's "without initialisation from the surviving weights": same shapes, new weights, same seed -> same draw
    from netcompress.core.methods import MethodData, apply
    from netcompress.pruning.neuron import APoZConfig

    data = MethodData(calib_loader=_loader(), seed=3)
    kept = apply(_mlp_with_dead_neurons(), APoZConfig(amount=0.25), data)
    fresh = apply(_mlp_with_dead_neurons(), APoZConfig(amount=0.25, reinitialise=True), data)
    again = apply(_mlp_with_dead_neurons(), APoZConfig(amount=0.25, reinitialise=True), data)
    assert "reinitialised" not in kept.summary and fresh.summary["reinitialised"] == 3
    shapes = {k: v.shape for k, v in kept.model.state_dict().items()}
    assert {k: v.shape for k, v in fresh.model.state_dict().items()} == shapes
    assert not torch.equal(fresh.model[0].weight, kept.model[0].weight)
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.model.parameters(), again.model.parameters(), strict=True)
    )
    # the survivors' weights are the original rows without the dead ones
    live = [i for i in range(8) if i not in DEAD["0"]]
    assert torch.equal(kept.model[0].weight, _mlp_with_dead_neurons()[0].weight[live])


class _LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.rnn = nn.LSTM(8, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.emb(ids))[0][:, -1])


def test_a_model_with_no_neuron_group_is_refused_not_returned_unchanged():
    ids = torch.randint(0, 20, (4, 5))
    with pytest.raises(UnsupportedModelError, match=r"no neuron group to prune.*'head': they are the model's output"):
        prune_neurons(_LSTMClassifier(), [(ids, torch.zeros(4, dtype=torch.long))], criterion="apoz", amount=0.25)
