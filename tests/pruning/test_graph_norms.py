"""Channel pruning through GroupNorm, LayerNorm, channels-last tensors and Linear on (N, L, C).

The reference for every prune is the unpruned model with the removed channels zeroed (producer
rows and biases, norm weights and biases): removing channels that are exactly zero must not change
the output. GroupNorm keeps whole groups; channels a LayerNorm normalises over are kept whole.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning, prune_channels
from netcompress.pruning.graph_tracing import build_channel_graph

X = torch.randn(2, 3, 8, 8)


def masked(model: nn.Module, keep: dict) -> nn.Module:
    """A copy of ``model`` with every removed output channel's weights and biases set to zero."""
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


def prune_and_compare(model: nn.Module, x: torch.Tensor, **kwargs) -> tuple[nn.Module, object]:
    model = model.eval()
    plan = plan_channel_pruning(model, x, **kwargs)
    pruned = apply_channel_plan(model, plan, x).eval()
    with torch.no_grad():
        assert (pruned(x) - masked(model, plan.keep_indices())(x)).abs().max().item() < 1e-5
    return pruned, plan


def randomise_affine(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=gen)
    return model


class GroupNormResNet(nn.Module):
    """conv-GN-ReLU stem, a residual block with GroupNorm(4, 16) (groups of 4), a GN(2, 12) branch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.gn0 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.c1, self.gn1 = nn.Conv2d(16, 12, 3, padding=1), nn.GroupNorm(2, 12)
        self.c2, self.gn2 = nn.Conv2d(12, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.gn0(self.stem(x)))
        y = F.relu(self.gn1(self.c1(x)))
        x = F.relu(x + self.gn2(self.c2(y)))
        return self.fc(x.mean((2, 3)))


def test_groupnorm_prunes_whole_groups_and_equals_masked() -> None:
    model = randomise_affine(GroupNormResNet())
    graph = build_channel_graph(model, X)
    stream = next(g for g in graph.groups if "stem" in g.producers)
    inner = next(g for g in graph.groups if g.producers == ["c1"])
    # one pruning unit per GroupNorm group: 4 groups of 4 channels, 2 groups of 6
    assert (stream.num_units, inner.num_units) == (4, 2)
    assert [len([m for m in u if m[0] == "stem"]) for u in stream.units] == [4, 4, 4, 4]
    pruned, _ = prune_and_compare(model, X, ratio=0.5, importance="l1")
    assert (pruned.gn0.num_groups, pruned.gn0.num_channels, pruned.gn0.weight.shape) == (2, 8, (8,))
    assert (pruned.gn1.num_groups, pruned.gn1.num_channels, pruned.c1.out_channels) == (1, 6, 6)
    assert (pruned.stem.out_channels, pruned.c2.out_channels, pruned.fc.in_features) == (8, 8, 8)


def test_groupnorm_amount_rounds_to_whole_groups() -> None:
    model = GroupNormResNet()
    # 0.3 of 16 channels would be 4.8; of 4 groups it is 1 group (4 channels); of 2 groups 0 groups
    pruned, _ = prune_and_compare(model, X, ratio=0.3, importance="l2")
    assert (pruned.gn0.num_groups, pruned.stem.out_channels, pruned.c1.out_channels) == (3, 12, 12)
    pruned, _ = prune_and_compare(model, X, ratio=0.8, importance="l2")
    assert (pruned.gn0.num_groups, pruned.stem.out_channels, pruned.gn1.num_groups) == (1, 4, 1)


def test_group_importance_aggregates_its_channels() -> None:
    """Group 2 has the weakest channels in total though not the single weakest channel."""
    model = GroupNormResNet()
    with torch.no_grad():
        for layer in (model.stem, model.c2):
            layer.weight.fill_(1.0)
            layer.weight[8:12] = 0.1  # group 2: four weak channels
            layer.weight[0] = 0.01  # group 0: one very weak channel, three strong ones
    plan = plan_channel_pruning(model, X, ratio=0.25, importance="l1")
    assert plan.keep_indices()["stem"]["out"] == [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15]


def test_groupnorm_with_one_group_is_kept_whole_and_named() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(1, 8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    group = next(g for g in build_channel_graph(model, X).groups if g.producers == ["0"])
    assert not group.prunable and "GroupNorm '1' has one group" in group.reason
    # the only group is kept whole: pruning is refused naming why (session 12; it returned an unpruned copy)
    with pytest.raises(UnsupportedModelError, match="no channel group of Sequential can be pruned .*GroupNorm '1'"):
        prune_channels(model, X, ratio=0.5)


class ChannelsLastBlock(nn.Module):
    """ConvNeXt-style: depthwise conv, permute to (N, H, W, C), LayerNorm, Linear MLP, permute back, add."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 2, stride=2)
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


def test_channels_last_layernorm_keeps_its_channels_whole_and_mlp_is_pruned() -> None:
    model = randomise_affine(ChannelsLastBlock())
    graph = build_channel_graph(model, X)
    stream = next(g for g in graph.groups if "stem" in g.producers)
    assert not stream.prunable and "norm 'norm' normalises over these channels" in stream.reason
    hidden = next(g for g in graph.groups if g.producers == ["fc1"])
    assert hidden.prunable and hidden.num_units == 32
    pruned, _ = prune_and_compare(model, X, ratio=0.5, importance="l1")
    assert (pruned.stem.out_channels, pruned.norm.weight.shape, pruned.fc1.out_features) == (8, (8,), 16)
    assert pruned.fc2.in_features == 16


class Tokens(nn.Module):
    """Conv1d features as tokens (N, L, C): Linear MLP on the last dim, a Linear on (N, L, C) input."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv1d(4, 12, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(12, 20), nn.Linear(20, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        t = F.relu(self.embed(x)).transpose(1, 2)  # (N, L, C)
        t = self.fc2(F.relu(self.fc1(t)))
        return self.head(t[:, 0] + t.mean(1))


def test_linear_on_tokens_follows_the_last_dim() -> None:
    x = torch.randn(3, 4, 10)
    model = Tokens()
    graph = build_channel_graph(model, x)
    assert {tuple(g.producers): g.num_units for g in graph.prunable_groups()} == {
        ("embed",): 12,
        ("fc1",): 20,
        ("fc2",): 6,
    }
    pruned, _ = prune_and_compare(model, x, ratio=0.5, importance="l2")
    assert (pruned.embed.out_channels, pruned.fc1.in_features, pruned.fc1.out_features) == (6, 6, 10)
    assert (pruned.fc2.out_features, pruned.head.in_features) == (3, 3)


def test_linear_over_a_spatial_dim_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Linear(8, 4))  # Linear mixes W, not the channels
    with pytest.raises(UnsupportedModelError, match=r"module '1'|call_module '1'.*dim 3"):
        build_channel_graph(model, X)


class Rolled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(torch.roll(self.c1(x), 1, dims=1)).mean((2, 3))


def test_unsupported_op_is_an_error_naming_it() -> None:
    with pytest.raises(UnsupportedModelError, match="'roll'.*fx node 'roll'"):
        prune_channels(Rolled(), X, ratio=0.5)


class StandardizedConv(nn.Conv2d):
    """A Conv2d subclass with its own forward: pruning its inputs would change the standardisation."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_layer_subclass_with_its_own_forward_is_traced_into_and_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), StandardizedConv(8, 4, 1))
    # refused at the conv reading the computed weight (session 12: the weight's own mean over its kept-whole
    # channels is no longer refused on its own)
    with pytest.raises(UnsupportedModelError, match=r"'conv2d'.* inside module '2' \(StandardizedConv\): its weight is not"):
        prune_channels(model, X, ratio=0.5)


# ---------------------------------------------------------------- Hugging Face models (not ours)
def _hf():
    return pytest.importorskip("transformers")


def test_hf_convnext_stage_prunes_its_mlp_and_keeps_the_layernormed_stream() -> None:
    transformers = _hf()
    config = transformers.ConvNextConfig(
        num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[2, 1], layer_scale_init_value=0.5
    )
    torch.manual_seed(0)
    convnext = randomise_affine(transformers.ConvNextModel(config).eval())
    # the whole model does not trace (its embedding checks the input's channel count in Python);
    # its stages do: stage 1 has a channels-first LayerNorm (a LayerNorm subclass) before a conv
    model = nn.Sequential(convnext.encoder.stages[0], convnext.encoder.stages[1])
    x = torch.randn(2, 8, 8, 8)
    graph = build_channel_graph(model, x)
    stream = [g for g in graph.groups if not g.prunable]
    assert any("'1.downsampling_layer.0' normalises over these channels" in g.reason for g in stream)
    assert any("'0.layers.0.layernorm' normalises over these channels" in g.reason for g in stream)
    hidden = sorted(tuple(g.producers) for g in graph.prunable_groups())
    assert hidden == [("0.layers.0.pwconv1",), ("0.layers.1.pwconv1",), ("1.layers.0.pwconv1",)]
    pruned, _ = prune_and_compare(model, x, ratio=0.25, importance="l2")
    assert [pruned[0].layers[0].pwconv1.out_features, pruned[1].layers[0].pwconv2.in_features] == [24, 48]
    assert pruned[1].downsampling_layer[1].in_channels == 8  # stream kept whole


def test_hf_bit_stage_weight_standardized_conv_is_refused_by_name() -> None:
    transformers = _hf()
    config = transformers.BitConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_groups=2
    )
    bit = transformers.BitModel(config).eval()
    # its GroupNorm+activation subclass is traced into (functional group_norm: channels kept whole);
    # its weight-standardised Conv2d subclass is traced into too, and refused by its op and module
    with pytest.raises(UnsupportedModelError, match=r"inside module '.*conv.*' \(WeightStandardizedConv2d\)"):
        build_channel_graph(bit.encoder.stages[0], torch.randn(2, 8, 8, 8))


def test_hf_convnext_full_model_traces_on_its_example_and_only_the_mlps_are_prunable() -> None:
    # its input check (`if num_channels != self.num_channels`) branches on a shape: traced with values
    transformers = _hf()
    config = transformers.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1])
    graph = build_channel_graph(transformers.ConvNextModel(config).eval(), torch.randn(2, 3, 16, 16))
    prunable = [(g.producers, g.num_units) for g in graph.groups if g.prunable]
    assert prunable == [
        (["encoder.stages.0.layers.0.pwconv1"], 32),
        (["encoder.stages.1.layers.0.pwconv1"], 64),
    ]
