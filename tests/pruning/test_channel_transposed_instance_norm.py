"""Channel pruning through ConvTranspose1d/2d/3d (weight ``(in, out / groups, *kernel)``) and InstanceNorm
(without affine parameters it passes channels through; with them, or with running statistics, it is sliced like
BatchNorm): decoder / U-Net code, MONAI's U-Nets among them.

The reference is the unpruned model whose every Conv / ConvTranspose / Linear zeroes the input channels the plan
removes (a pre-hook): a pruned model must compute exactly that.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.pruning import masked_reference
from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning
from netcompress.pruning.graph_tracing import build_channel_graph
from netcompress.pruning.importance import layer_scores


def prune_and_compare(model: nn.Module, x: torch.Tensor, ratio: float = 0.5, **kw) -> nn.Module:
    model = model.eval()
    plan = plan_channel_pruning(model, x, ratio=ratio, **kw)
    pruned = apply_channel_plan(model, plan, x).eval()
    with torch.no_grad():
        want, got = masked_reference(model, plan.keep_indices()).eval()(x), pruned(x)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() < 1e-5
        assert (model(x) - got).abs().max().item() > 1e-3  # the comparison can tell a pruned model apart
    return pruned


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomise_norms(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.modules.instancenorm._InstanceNorm):
            if m.affine:
                m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
                m.bias.data = torch.randn(m.bias.shape, generator=gen)
            if m.track_running_stats:
                m.running_mean.data = torch.randn(m.running_mean.shape, generator=gen)
                m.running_var.data = torch.rand(m.running_var.shape, generator=gen) + 0.5
    return model


class Decoder(nn.Module):
    """conv -> IN (no affine) -> up (ConvTranspose, dense) -> IN (affine, running stats) -> up (grouped, 2)
    -> depthwise up (2 outputs per input) -> skip add -> 1x1 head (the output, kept whole)."""

    def __init__(self, dims: int = 2) -> None:
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        up = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
        norm = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 1]
        self.stem, self.n0 = conv(3, 8, 3, padding=1), norm(8)
        self.up1, self.n1 = up(8, 12, 2, stride=2), norm(12, affine=True, track_running_stats=True)
        self.up2 = up(12, 8, 3, padding=1, groups=2)
        self.up3 = up(8, 16, 3, padding=1, groups=8)
        self.skip = up(8, 16, 2, stride=2)
        self.head = conv(16, 2, 1)

    def forward(self, x):
        x = F.relu(self.n0(self.stem(x)))
        y = F.relu(self.n1(self.up1(x)))
        y = self.up3(F.relu(self.up2(y)))
        return self.head(F.relu(y + self.skip(x)))


@pytest.mark.parametrize(("dims", "x"), [(1, (2, 3, 8)), (2, (2, 3, 6, 6)), (3, (1, 3, 4, 4, 4))])
def test_transposed_convs_and_instance_norms_prune_as_masked(dims: int, x: tuple) -> None:
    torch.manual_seed(0)
    model = randomise_norms(Decoder(dims))
    pruned = prune_and_compare(model, torch.randn(*x))
    k = 2 ** dims  # a kernel of 2 (and of 3 below) in every spatial dim
    k3 = 3**dims
    # stem 8 -> 4 (n0 follows), up1 12 -> 6 (n1 sliced), up2 8 -> 4 (2 groups of 2), up3 + skip: 16 -> 8 (depthwise:
    # 4 inputs x 2); head keeps its 2 outputs
    assert (pruned.stem.out_channels, pruned.up1.out_channels, pruned.up2.out_channels) == (4, 6, 4)
    assert (pruned.up3.in_channels, pruned.up3.out_channels, pruned.up3.groups) == (4, 8, 4)
    assert (pruned.up2.in_channels, pruned.up2.groups, pruned.n1.num_features, pruned.n0.num_features) == (6, 2, 6, 4)
    assert tuple(pruned.up2.weight.shape[:2]) == (6, 2) and pruned.n1.running_mean.shape == (6,)
    expected = (
        (3 * 4 * k3 + 4)  # stem
        + (4 * 6 * k + 6) + 2 * 6  # up1, n1's weight and bias
        + (6 * 2 * k3 + 4)  # up2: (in 6, out 4 / 2 groups)
        + (4 * 2 * k3 + 8)  # up3: depthwise, 2 outputs per input
        + (4 * 8 * k + 8)  # skip
        + (8 * 2 + 2)  # head
    )
    assert params(pruned) == expected


def test_instance_norm_without_affine_passes_channels_through() -> None:
    graph = build_channel_graph(Decoder(2), torch.randn(1, 3, 6, 6))
    stem = next(g for g in graph.groups if g.producers == ["stem"])
    assert stem.prunable and stem.num_units == 8 and "n0" in stem.out_layers
    assert graph.layers["n0"].kind == "instancenorm" and graph.layers["up1"].kind == "conv_transpose"
    # up2's 2 groups tie output j to output 4 + j; the depthwise up3 ties each input to its 2 outputs, which the
    # skip add ties to skip's outputs and head's inputs: 4 units of 2 up2 outputs, 4 up3 / skip outputs
    up3 = next(g for g in graph.groups if "up3" in g.producers)
    assert up3.num_units == 4 and sorted(up3.producers) == ["skip", "up2", "up3"]
    members = [sorted((layer, side) for layer, side, _ in unit) for unit in up3.units]
    count = {key: members[0].count(key) for key in set(members[0])}
    assert count == {("up2", "out"): 2, ("up3", "in"): 2, ("up3", "out"): 4, ("skip", "out"): 4, ("head", "in"): 4}


def test_transposed_importance_reads_output_channels_along_dim_one() -> None:
    torch.manual_seed(1)
    model = Decoder(2).eval()
    x = torch.randn(1, 3, 6, 6)
    graph = build_channel_graph(model, x)
    l1 = layer_scores("l1", model, graph)
    assert torch.allclose(l1["up1"], model.up1.weight.detach().abs().sum((0, 2, 3)))
    # grouped (2 groups of 6 inputs -> 4 outputs each): output o reads inputs of its group only
    w = model.up2.weight.detach().abs()
    want = torch.stack([w[6 * (o // 4) : 6 * (o // 4) + 6, o % 4].sum() for o in range(8)])
    assert torch.allclose(l1["up2"], want)
    group = layer_scores("group_l1", model, graph)
    assert torch.allclose(group["up1:in"], model.up1.weight.detach().abs().sum((1, 2, 3)))


def test_taylor_scores_a_transposed_conv_by_its_outputs() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.ConvTranspose2d(6, 6, 2, stride=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))  # fmt: skip
    x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 4, (4,))
    graph = build_channel_graph(model, x)
    scores = layer_scores("taylor", model, graph, loader=[(x, y)], max_batches=1)
    work = copy.deepcopy(model)
    F.cross_entropy(work(x), y).backward()
    up = work[2]
    want = (up.weight * up.weight.grad).abs().sum((0, 2, 3)) + (up.bias * up.bias.grad).abs()
    assert torch.allclose(scores["2"], want.detach(), atol=1e-7)


MONAI = [
    ("UNet", dict(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2),
                  num_res_units=1), (2, 1, 32, 32)),
    ("UNet", dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
                  num_res_units=1), (1, 1, 16, 16, 16)),
    ("BasicUNet", dict(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4)), (2, 1, 32, 32)),
    ("DynUNet", dict(spatial_dims=2, in_channels=1, out_channels=2, kernel_size=[3, 3, 3], strides=[1, 2, 2],
                     upsample_kernel_size=[2, 2], filters=[8, 16, 32], res_block=True), (2, 1, 32, 32)),
    ("AttentionUnet", dict(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2)),
     (2, 1, 32, 32)),
]  # fmt: skip


@pytest.mark.parametrize(("cls", "kw", "shape"), MONAI, ids=[f"{c}{k['spatial_dims']}d" for c, k, _ in MONAI])
def test_monai_unets_prune_as_masked(cls: str, kw: dict, shape: tuple) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = randomise_norms(getattr(nets, cls)(**kw))
    assert any(isinstance(m, nn.modules.conv._ConvTransposeNd) for m in model.modules())
    pruned = prune_and_compare(model, torch.randn(*shape), ratio=0.3)
    assert params(pruned) < 0.7 * params(model)
