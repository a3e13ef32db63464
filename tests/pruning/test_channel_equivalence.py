"""Physically pruned models must equal the unpruned model with the same channels zeroed.

For each structural case the reference is a copy of the original where every removed output
channel has its filter, bias and BatchNorm weight/bias set to zero (eval mode): removing a channel
whose output is exactly zero must not change the model's output.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning
from netcompress.pruning.graph_tracing import build_channel_graph


class ConvChain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.fc1, self.fc2 = nn.Linear(12 * 4 * 4, 20), nn.Linear(20, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.relu(self.b2(self.c2(x)))
        x = x.view(x.size(0), -1)  # flatten into Linear: each channel is 16 input features
        return self.fc2(torch.relu(self.fc1(x)))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, shortcut_conv: bool) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2) if shortcut_conv else BasicBlock(8, 8, 1)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16 if shortcut_conv else 8, 4)

    def forward(self, x):
        x = self.layer2(self.layer1(F.relu(self.bn(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b = (
            nn.Conv2d(3, 6, 3, padding=1),
            nn.Conv2d(6, 4, 1),
            nn.Conv2d(6, 8, 3, padding=1),
        )
        self.bn_b = nn.BatchNorm2d(8)
        self.mix, self.fc = nn.Conv2d(12, 10, 1), nn.Linear(10, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([F.relu(self.a(x)), F.relu(self.bn_b(self.b(x)))], dim=1)
        return self.fc(F.relu(self.mix(x)).mean(dim=(2, 3)))


class Depthwise(nn.Module):
    def __init__(self, multiplier: int = 1) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.b2 = (
            nn.Conv2d(8, 8 * multiplier, 3, padding=1, groups=8),
            nn.BatchNorm2d(8 * multiplier),
        )
        self.pw, self.b3 = nn.Conv2d(8 * multiplier, 12, 1), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = F.relu6(self.b1(self.c1(x)))
        x = F.relu6(self.b2(self.dw(x)))
        x = F.relu6(self.b3(self.pw(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.g, self.bn = nn.Conv2d(8, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.g(F.relu(self.c1(x)))))
        return self.fc(F.relu(self.c3(x)).mean((2, 3)))


class MLPBatchNorm1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(3 * 4 * 4, 32), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 5),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.se1, self.se2 = nn.Linear(16, 6), nn.Linear(6, 16)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        n, c = x.shape[0], x.shape[1]
        s = torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1).flatten(1)))))
        x = x * s.view(n, c, 1, 1)
        return self.fc(F.relu(self.c2(x)).mean((2, 3)))


class SincLike(nn.Module):
    """A sinc-style filter bank: per-filter parameters, kernel built in ``filters()`` (pruning protocol)."""

    def __init__(self, out_channels: int = 12, kernel_size: int = 15) -> None:
        super().__init__()
        self.out_channels, self.kernel_size = out_channels, kernel_size
        self.low_hz = nn.Parameter(torch.rand(out_channels) * 0.2)
        self.band_hz = nn.Parameter(torch.rand(out_channels) * 0.2 + 0.05)
        self.register_buffer("t", torch.linspace(-3.0, 3.0, kernel_size))

    def filters(self) -> torch.Tensor:
        low, high = self.low_hz[:, None], (self.low_hz + self.band_hz)[:, None]
        kernel = high * torch.sinc(high * self.t) - low * torch.sinc(low * self.t)
        return kernel.unsqueeze(1)

    def forward(self, x):
        return F.conv1d(x, self.filters(), padding=self.kernel_size // 2)

    def prune_out_channels(self, keep_idx: torch.Tensor) -> None:
        self.low_hz = nn.Parameter(self.low_hz.detach()[keep_idx].clone())
        self.band_hz = nn.Parameter(self.band_hz.detach()[keep_idx].clone())
        self.out_channels = len(keep_idx)

    def mask_out_channels(self, removed: list[int]) -> None:  # test reference only: zero kernels
        with torch.no_grad():
            self.low_hz[removed] = 0.0
            self.band_hz[removed] = 0.0


class SincNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sinc, self.b0 = SincLike(), nn.BatchNorm1d(12)
        self.dw, self.b1 = nn.Conv1d(12, 12, 5, padding=2, groups=12), nn.BatchNorm1d(12)
        self.pw, self.b2 = nn.Conv1d(12, 10, 1), nn.BatchNorm1d(10)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        x = F.avg_pool1d(torch.abs(self.b0(self.sinc(x))), 2)
        x = F.relu(self.b2(self.pw(F.relu(self.b1(self.dw(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool1d(x, 1), 1))


CASES = {
    "conv_chain_view_flatten": (ConvChain, (2, 3, 8, 8)),
    "resnet_identity": (lambda: TinyResNet(shortcut_conv=False), (2, 3, 8, 8)),
    "resnet_1x1_shortcut": (lambda: TinyResNet(shortcut_conv=True), (2, 3, 8, 8)),
    "concat": (Concat, (2, 3, 6, 6)),
    "depthwise": (Depthwise, (2, 3, 6, 6)),
    "depthwise_multiplier": (lambda: Depthwise(multiplier=2), (2, 3, 6, 6)),
    "grouped": (Grouped, (2, 3, 6, 6)),
    "mlp_batchnorm1d": (MLPBatchNorm1d, (4, 3, 4, 4)),
    "squeeze_excite": (SqueezeExcite, (2, 3, 6, 6)),
    "conv1d_sinc": (SincNetLike, (2, 1, 64)),
}


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so zeroing beta actually matters."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=gen) + 0.5
            m.bias.data = torch.randn(n, generator=gen)
            m.running_mean.data = torch.randn(n, generator=gen) * 0.1
            m.running_var.data = torch.rand(n, generator=gen) + 0.5
    return model.eval()


def masked_reference(model: nn.Module, keep: dict) -> nn.Module:
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, k in keep.items():
            module = ref.get_submodule(name)
            if k["out"] is None:
                continue
            n = module.out_channels if hasattr(module, "out_channels") else None
            n = n or getattr(module, "out_features", None) or getattr(module, "num_features", None)
            removed = sorted(set(range(n)) - set(k["out"]))
            if not removed:
                continue
            if hasattr(module, "mask_out_channels"):
                module.mask_out_channels(removed)
                continue
            module.weight[removed] = 0.0
            if getattr(module, "bias", None) is not None:
                module.bias[removed] = 0.0
    return ref


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("scope", ["local", "global"])
def test_pruned_equals_masked(case: str, scope: str) -> None:
    factory, shape = CASES[case]
    model = randomise_batchnorm(factory())
    x = torch.randn(*shape)
    original_state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_channel_pruning(model, x, ratio=0.5, importance="l1", scope=scope)
    assert plan.pruned_units, f"{case}: nothing was pruned"
    pruned = apply_channel_plan(model, plan, x).eval()
    reference = masked_reference(model, plan.keep_indices()).eval()
    with torch.no_grad():
        out_pruned, out_ref = pruned(x), reference(x)
    assert out_pruned.shape == model(x).shape
    assert (out_pruned - out_ref).abs().max().item() < 1e-5
    # the input model is untouched and the result is really smaller
    assert all(torch.equal(original_state[k], v) for k, v in model.state_dict().items())
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    # and it survives the serialisation contract
    copy.deepcopy(pruned)


def test_residual_couples_both_branches() -> None:
    model = TinyResNet(shortcut_conv=True)
    graph = build_channel_graph(model, torch.randn(2, 3, 8, 8))
    stage2 = next(g for g in graph.groups if "layer2.conv2" in g.producers)
    assert stage2.producers == ["layer2.conv2", "layer2.shortcut.0"]
    assert stage2.num_units == 16 and stage2.prunable
    stage1 = next(g for g in graph.groups if "stem" in g.producers)
    assert stage1.producers == ["layer1.conv2", "stem"]  # identity shortcut: stem and block output coupled


def test_grouped_conv_keeps_groups_equal() -> None:
    model = Grouped()
    x = torch.randn(2, 3, 6, 6)
    pruned = apply_channel_plan(model, plan_channel_pruning(model, x, ratio=0.5), x)
    assert (pruned.g.groups, pruned.g.in_channels, pruned.g.out_channels) == (4, 4, 8)
    assert pruned.c1.out_channels == 4 and pruned.bn.num_features == 8


def test_depthwise_follows_its_input() -> None:
    model = Depthwise(multiplier=2)
    x = torch.randn(2, 3, 6, 6)
    pruned = apply_channel_plan(model, plan_channel_pruning(model, x, ratio=0.5), x)
    assert (pruned.c1.out_channels, pruned.dw.groups, pruned.dw.out_channels, pruned.pw.in_channels) == (
        4,
        4,
        8,
        8,
    )


def test_sinc_module_is_pruned_through_protocol() -> None:
    model = SincNetLike()
    x = torch.randn(2, 1, 64)
    pruned = apply_channel_plan(model, plan_channel_pruning(model, x, ratio=0.5), x)
    assert pruned.sinc.out_channels == 6 and pruned.sinc.low_hz.shape == (6,)
    assert pruned.dw.groups == 6 and pruned.b0.num_features == 6 and pruned.fc.in_features == 5
