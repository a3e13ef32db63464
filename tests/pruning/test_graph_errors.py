"""The channel graph refuses what it cannot handle, with errors that name the op."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.pruning.channel import prune_channels
from netcompress.pruning.graph_tracing import build_channel_graph

X = torch.randn(2, 3, 8, 8)


class DataDependentIf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x.mean((2, 3)))


class WithOp(nn.Module):
    """conv -> <op> -> conv -> pool -> fc, with the op under test in the middle."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.c1, self.c2, self.fc = (
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Linear(8, 2),
        )
        self.norm = nn.LocalResponseNorm(3)  # mixes neighbouring channels

    def forward(self, x):
        x = self.c1(x)
        if self.op == "cumsum":
            x = torch.cumsum(x, dim=1)
        elif self.op == "slice":
            x = torch.cat([x[:, :4], x[:, 4:]], dim=1)
        elif self.op == "local_response_norm":
            x = self.norm(x)
        elif self.op == "channel_mean":
            x = x - x.mean(1, keepdim=True)
        elif self.op == "transpose":
            x = x.transpose(0, 1).transpose(0, 1)  # moves the batch dim (channel moves are followed)
        return self.fc(F.relu(self.c2(x)).mean((2, 3)))


def test_untraceable_model_names_the_line() -> None:
    with pytest.raises(UnsupportedModelError, match=r"cannot trace DataDependentIf.*if x\.sum\(\) > 0"):
        prune_channels(DataDependentIf(), X, ratio=0.5)


@pytest.mark.parametrize(
    ("op", "named"),
    [
        ("cumsum", "cumsum"),
        ("slice", "getitem"),
        ("transpose", "transpose"),
    ],
)
def test_unsupported_op_is_named(op: str, named: str) -> None:
    with pytest.raises(UnsupportedModelError, match=named) as info:
        build_channel_graph(WithOp(op), X)
    assert "fx node" in str(info.value)


@pytest.mark.parametrize("op", ["local_response_norm", "channel_mean"])
def test_an_op_mixing_channels_keeps_them_whole(op: str) -> None:
    """LocalResponseNorm and a mean over channels mix c1's channels: those are kept whole (refused before session
    16), c2 still prunes, and pruned == masked original."""
    from netcompress.pruning import masked_reference
    from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning

    torch.manual_seed(0)
    model = WithOp(op).eval()
    plan = plan_channel_pruning(model, X, ratio=0.5)
    small = apply_channel_plan(model, plan, X)
    assert small.c1.out_channels == 8 and small.c2.out_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(small(X), masked_reference(model, plan.keep_indices())(X), atol=1e-5, rtol=1e-5)


class HardCodedView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = (
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Conv2d(8, 4, 3, padding=1),
            nn.Linear(256, 2),
        )

    def forward(self, x):
        x = self.c2(F.relu(self.c1(x)))
        return self.fc(x.view(-1, 256))  # 4 channels * 8 * 8 baked into the code


def test_hard_coded_view_freezes_its_channels() -> None:
    model = HardCodedView()
    graph = build_channel_graph(model, X)
    c2_group = next(g for g in graph.groups if g.producers == ["c2"])
    assert not c2_group.prunable
    pruned = prune_channels(model, X, ratio=0.5)
    assert (pruned.c1.out_channels, pruned.c2.out_channels, pruned.fc.in_features) == (4, 4, 256)


class SharedConv(nn.Module):
    """One conv applied twice: both calls' inputs are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.shared, self.fc = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, padding=1), nn.Linear(6, 2)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))
        return self.fc(x.mean((2, 3)))


def test_shared_conv_called_twice_prunes_consistently() -> None:
    model = SharedConv()
    graph = build_channel_graph(model, X)
    group = next(g for g in graph.groups if "c1" in g.producers)
    assert group.producers == ["c1", "shared"] and group.num_units == 6
    pruned = prune_channels(model, X, ratio=0.5)
    assert (pruned.c1.out_channels, pruned.shared.in_channels, pruned.shared.out_channels) == (3, 3, 3)
    assert pruned(X).shape == (2, 2)


def test_model_output_and_input_are_never_pruned() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 5, 1))
    pruned = prune_channels(model, X, ratio=0.9)
    assert (pruned[0].in_channels, pruned[0].out_channels, pruned[2].out_channels) == (3, 1, 5)
    assert pruned(X).shape == (2, 5, 8, 8)


def test_channel_softmax_at_output_is_allowed_but_frozen() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Softmax(dim=1))
    pruned = prune_channels(model, X, ratio=0.5)
    assert (pruned[0].out_channels, pruned[2].out_channels) == (4, 4)


class SubmoduleNamedMeta(nn.Module):
    """A submodule named like a torch.fx GraphModule attribute (``meta``): fx cannot rebuild the model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.meta, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(5, 4), nn.Linear(8, 2)

    def forward(self, x, features):
        return self.fc(torch.cat([self.conv(x).mean((2, 3)), self.meta(features)], 1))


def test_submodule_named_like_a_graph_module_attribute_is_named() -> None:
    inputs = (X, torch.randn(2, 5))
    with pytest.raises(
        UnsupportedModelError, match=r"cannot rebuild SubmoduleNamedMeta as a torch.fx GraphModule .*'meta'"
    ):
        prune_channels(SubmoduleNamedMeta(), inputs, ratio=0.5)


class _CachesSizeOnFirstCall(nn.Module):
    """Caches a size on the module the first time it runs (as Swin caches its window size), then branches
    on tensor data, so tracing fails after the cache was written with an fx Proxy."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.size = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None:
            self.size = x.shape[-1]
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent: untraceable
            y = y + 1
        return y * self.size


def test_a_failed_trace_leaves_the_users_model_working():
    model = _CachesSizeOnFirstCall()
    x = torch.randn(2, 3, 5, 5)
    with pytest.raises(UnsupportedModelError, match="cannot trace"):
        build_channel_graph(model, x)
    assert model.size is None  # the Proxy the traced forward stored is gone
    assert model(x).shape == (2, 4, 5, 5) and model.size == 5
