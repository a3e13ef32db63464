"""Slimmable width on residual and concatenating models: widths applied per channel group of the
dependency graph, extraction equal to the slimmable model with exact sizes, switchable BN trained
per width by the sandwich rule with in-place distillation."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress import models
from netcompress.core.methods import MethodData, apply
from netcompress.dynamic import (
    SlimmableConfig,
    SlimmableHook,
    SwitchableBatchNorm,
    active_channels,
    at_width,
    extract_width,
    make_slimmable,
    recalibrate_widths_,
)
from netcompress.evaluation import count_macs


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


class TinyResNet(nn.Module):
    """Stem 8, an identity block, a stride-2 block to 12 with a 1x1 conv + BN shortcut, a concat head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.a1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.a2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.b1 = nn.Sequential(
            nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU()
        )
        self.b2 = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12))
        self.down = nn.Sequential(nn.Conv2d(8, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12))
        self.side = nn.Conv2d(12, 4, 1)  # concatenated with the block output: 16 channels into the head
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.a2(self.a1(x)))
        x = F.relu(self.b2(self.b1(x)) + self.down(x))
        x = torch.cat([x, self.side(x)], dim=1)
        return self.head(x.mean((2, 3)))


def _tiny_params(c8: int, c12: int, c4: int) -> int:
    return (
        (3 * c8 * 9 + 2 * c8)  # stem conv + BN
        + 2 * (c8 * c8 * 9 + 2 * c8)  # a1, a2
        + (c8 * c12 * 9 + 2 * c12)
        + (c12 * c12 * 9 + 2 * c12)
        + (c8 * c12 + 2 * c12)  # b1, b2, down
        + (c12 * c4 + c4)  # side (bias)
        + ((c12 + c4) * 5 + 5)  # head
    )


def _resnet20_params(c1: int, c2: int, c3: int, classes: int = 10) -> int:
    block = lambda c_in, c: c_in * c * 9 + c * c * 9 + 4 * c  # noqa: E731  conv1, conv2, bn1, bn2
    shortcut = lambda c_in, c: c_in * c + 2 * c  # noqa: E731
    return (
        3 * c1 * 9 + 2 * c1
        + 3 * block(c1, c1)
        + block(c1, c2) + shortcut(c1, c2) + 2 * block(c2, c2)
        + block(c2, c3) + shortcut(c2, c3) + 2 * block(c3, c3)
        + c3 * classes + classes
    )  # fmt: skip


def test_tiny_residual_concat_model_extracts_exactly_at_every_width():
    model = _randomise_bn(TinyResNet())
    x = torch.randn(4, 3, 8, 8)
    widths = (0.25, 0.5, 0.75, 1.0)
    slim = make_slimmable(model, widths=widths, example_inputs=x[:1]).eval()
    assert (slim(x) - model(x)).abs().max().item() == 0.0
    for w in widths:
        small = extract_width(slim, w).eval()
        with at_width(slim, w):
            assert torch.allclose(small(x), slim(x), atol=1e-5, rtol=0)
            if w == 0.5:
                assert count_macs(small, x[:1])[0] == count_macs(slim, x[:1])[0]
        c8, c12, c4 = (active_channels(n, w) for n in (8, 12, 4))
        assert _params(small) == _tiny_params(c8, c12, c4)
        assert not any(isinstance(m, SwitchableBatchNorm) for m in small.modules())
        # the head reads the kept block channels, then the kept side channels (not a prefix of 16)
        assert small.head.in_features == c12 + c4 and small.head.out_features == 5
    assert _tiny_params(8, 12, 4) == _params(model) == 3881
    assert _params(extract_width(slim, 0.5)) == _tiny_params(4, 6, 2) == 1079
    assert slim.width == 1.0  # at_width and extract_width restored it


def test_concat_reads_the_kept_channels_of_each_part():
    slim = make_slimmable(
        _randomise_bn(TinyResNet()), widths=(0.5, 1.0), example_inputs=torch.randn(1, 3, 8, 8)
    )
    selection = slim.net.head.selections[0.5]
    assert selection.in_sel == [0, 1, 2, 3, 4, 5, 12, 13] and selection.out_sel == slice(0, 5)
    assert slim.net.stem[0].selections[0.5].in_sel == slice(0, 3)  # the image channels are never sliced


@pytest.fixture(scope="module")
def resnet20_slim():
    model = _randomise_bn(models.create("cifar_resnet20", num_classes=10))
    return make_slimmable(model, widths=(0.25, 0.5, 0.75, 1.0), example_inputs=torch.randn(1, 3, 8, 8)).eval()


@pytest.mark.parametrize("width", [0.25, 0.5, 0.75, 1.0])
def test_resnet20_extracted_equals_slimmable_with_exact_parameter_count(width, resnet20_slim):
    slim, x = resnet20_slim, torch.randn(3, 3, 8, 8)
    small = extract_width(slim, width).eval()
    with at_width(slim, width):
        assert torch.allclose(small(x), slim(x), atol=1e-5, rtol=0)
    c1, c2, c3 = (active_channels(c, width) for c in (16, 32, 64))
    assert _params(small) == _resnet20_params(c1, c2, c3)
    assert _resnet20_params(16, 32, 64) == 272474  # the figure in cifar_resnet20's docstring
    assert [type(m) for m in small.modules()].count(nn.Conv2d) == 21


def test_residual_groups_slice_consistently():
    model = models.create("cifar_resnet20", num_classes=10)
    slim = make_slimmable(model, widths=(0.25, 0.5, 1.0), example_inputs=torch.randn(1, 3, 8, 8))
    stem_group = next(g for g in slim.plan.groups if "conv1" in g["producers"])
    assert set(stem_group["producers"]) == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    assert {"bn1", "layer1.0.bn2", "layer1.2.bn2"} <= set(stem_group["layers"])
    assert stem_group["channels"] == {0.25: 4, 0.5: 8, 1.0: 16}
    stage3 = next(g for g in slim.plan.groups if "layer3.0.downsample.0" in g["producers"])
    assert {"layer3.0.conv2", "layer3.1.conv2", "layer3.2.conv2"} <= set(stage3["producers"])
    classes = next(g for g in slim.plan.groups if g["producers"] == ["fc"])
    assert not classes["sliced"] and classes["channels"] == {0.25: 10, 0.5: 10, 1.0: 10}
    small = extract_width(slim, 0.25)
    outs = {n: m.out_channels for n, m in small.named_modules() if isinstance(m, nn.Conv2d)}
    ins = {n: m.in_channels for n, m in small.named_modules() if isinstance(m, nn.Conv2d)}
    assert {outs["conv1"], outs["layer1.2.conv2"], ins["layer2.0.conv1"], ins["layer2.0.downsample.0"]} == {4}
    assert outs["layer2.0.conv2"] == outs["layer2.0.downsample.0"] == outs["layer2.2.conv2"] == 8
    assert ins["conv1"] == 3 and small.fc.in_features == 16 and small.fc.out_features == 10


def _bn_means(slim) -> dict[float, torch.Tensor]:
    bn = slim.net.layer2[0].bn1
    return {w: b.running_mean.clone() for w, b in zip(bn.widths, bn.bns)}


def test_sandwich_step_with_inplace_distillation_updates_bn_per_width_separately():
    model = models.create("cifar_resnet20", num_classes=10)
    widths = (0.25, 0.5, 0.75, 1.0)
    slim = make_slimmable(model, widths=widths, example_inputs=torch.randn(1, 3, 8, 8)).train()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    hook = SlimmableHook(sandwich=True, num_random=1, inplace_distillation=True)
    hook.epoch_start(slim, 0)
    random.seed(3)
    picked = hook._widths_this_batch(slim)
    random.seed(3)
    before = _bn_means(slim)
    outputs = slim(x)  # what fit runs: the widest width on the labels
    loss = F.cross_entropy(outputs, y)
    total = hook.loss(slim, x, outputs, y, loss)
    assert picked[0] == 0.25 and len(picked) == 2 and picked[1] in (0.5, 0.75)
    after = _bn_means(slim)
    trained = {1.0, *picked}
    for w in widths:  # each width's BN saw only its own forward pass
        assert torch.equal(before[w], after[w]) == (w not in trained), w
    total.backward()
    assert slim.width == 1.0
    grads = slim.net.conv1.weight.grad
    assert grads is not None and grads[:4].abs().sum() > 0
    # the narrower widths learn the widest width's soft predictions, not the labels (eval: fixed BN)
    slim.eval()
    with torch.no_grad():
        random.seed(3)
        outputs = slim(x)
        total = hook.loss(slim, x, outputs, y, F.cross_entropy(outputs, y))
        soft = F.softmax(outputs, dim=1)
        by_hand = F.cross_entropy(outputs, y)
        for w in picked:
            with at_width(slim, w):
                by_hand = by_hand + F.cross_entropy(slim(x), soft)
    assert total.item() == pytest.approx(by_hand.item(), abs=1e-6)


def test_method_trains_a_resnet_and_deploys_a_plain_width():
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(48, 3, 8, 8, generator=gen), torch.randint(0, 4, (48,), generator=gen)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=16)
    model = models.create("cifar_resnet20", num_classes=4)
    config = SlimmableConfig(widths=[0.25, 0.5, 1.0], epochs=1, lr=0.05, sandwich=True, num_random=1,
                             inplace_distillation=True, deploy_width=0.5, recalibrate_batches=2,
                             progress=False)  # fmt: skip
    data = MethodData(train_loader=loader, val_loader=loader, example_inputs=images[:1], seed=0)
    result = apply(model, config, data)
    assert not any(isinstance(m, SwitchableBatchNorm) for m in result.model.modules())
    assert (
        result.summary["deployed_params"] == _params(result.model) == _resnet20_params(8, 16, 32, classes=4)
    )
    assert result.summary["recalibrated_samples"] == {"w0.25": 32, "w0.5": 32, "w1": 32}
    per_width = result.summary["per_width"]
    assert set(per_width) == {"w0.25", "w0.5", "w1"}
    assert per_width["w0.25"]["macs"] < per_width["w0.5"]["macs"] < per_width["w1"]["macs"]
    assert per_width["w0.5"]["params"] == _resnet20_params(8, 16, 32, classes=4)


def test_recalibration_sets_each_width_statistics_from_its_own_forward():
    model = _randomise_bn(TinyResNet())
    slim = make_slimmable(model, widths=(0.5, 1.0), example_inputs=torch.randn(1, 3, 8, 8))
    x = torch.randn(8, 3, 8, 8)
    loader = [(x, torch.zeros(8, dtype=torch.long))] * 3  # the same batch 3 times: the mean is its mean
    head_before, flags = slim.net.head.weight.clone(), [m.training for m in slim.modules()]
    assert recalibrate_widths_(slim, loader, num_batches=2) == {0.5: 16, 1.0: 16}
    for w, bn in zip((0.5, 1.0), slim.net.stem[1].bns):
        conv = extract_width(slim, w).stem[0]
        features = conv(x).detach()
        assert torch.allclose(bn.running_mean, features.mean((0, 2, 3)), atol=1e-5)
        assert torch.allclose(bn.running_var, features.var((0, 2, 3), unbiased=True), atol=1e-4)
        assert bn.momentum == 0.1 and bn.num_batches_tracked.item() == 2
    assert torch.equal(slim.net.head.weight, head_before) and [m.training for m in slim.modules()] == flags
