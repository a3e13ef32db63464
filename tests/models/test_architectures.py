"""Exact parameter counts and layer layouts, each derived by hand or from the reference reports."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress import models


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "kwargs", "count"),
    [
        # E3: 2,161,584 conv weights + 1,264 conv biases + 2,528 BN + 256*11+11 Linear
        ("food_cnn", {"num_classes": 11}, 2_168_203),
        # E3 student: 480 (stem+BN) + 736 + 2,496 + 9,088 + 34,560 + 3 x 68,864 + 2,827
        ("food_cnn_dws", {"num_classes": 11}, 256_779),
        # E3 teacher: torchvision resnet18 without fc (11,176,512) + 512*11+11
        ("resnet18", {"num_classes": 11}, 11_182_155),
        # the CPU protocol's "0.59 M": 581,472 conv weights + 1,408 BN + 2,570 Linear (no conv bias before BN)
        ("cifar_vgg", {"cfg": "narrow"}, 585_450),
        # same without BN: conv biases (704) instead of BN (1,408)
        ("cifar_vgg", {"cfg": "narrow", "batch_norm": False}, 584_746),
        # network slimming's VGG-19 (20.04 M in the paper)
        ("cifar_vgg", {"cfg": "vgg19"}, 20_035_018),
        # option-A counts 269,722 / 853,018 plus the two 1x1-conv+BN shortcuts (576 + 2,176)
        ("cifar_resnet20", {}, 272_474),
        ("cifar_resnet56", {}, 855_770),
        ("cifar_resnet18", {}, 11_173_962),
        # stem 928 + blocks 2,528 + 9,152 + 18,048 + 34,688 + 68,864 + 134,912 + 268,800 + fc 5,130
        ("mobilenet_student", {}, 543_050),
        # sinc 160 + BN 160 + block 21,680 + 4 x 60,240 + fc 2,410
        ("sincnet", {}, 265_370),
        # 144+32 + 4,608+64 + 18,432+128 + 650
        ("digits_cnn", {}, 24_058),
        ("mlp", {}, 17_226),
        ("lenet", {"input_size": 28}, 61_706),
    ],
)
def test_exact_parameter_counts(name: str, kwargs: dict, count: int) -> None:
    assert _params(models.create(name, **kwargs)) == count


def test_vgg_cfg_list_builds_the_printed_layers() -> None:
    model = models.create("cifar_vgg", cfg=[51, "M", 27, 53], num_classes=10)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 51), (51, 27), (27, 53)]
    assert (model.classifier.in_features, model.classifier.out_features) == (53, 10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == 3
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_vgg_width_scales_every_conv() -> None:
    model = models.create("cifar_vgg", cfg="narrow", width=0.5)
    assert model.cfg == [16, 16, "M", 32, 32, "M", 64, 64, "M", 128, "M"]


def test_resnet18_uses_torchvision_state_dict_names() -> None:
    state = models.create("resnet18", num_classes=1000).state_dict()
    # torchvision's resnet18: 62 parameter tensors + 20 BN x 3 buffers
    assert len(state) == 122
    for key in ["conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight"]:
        assert key in state
    assert state["layer4.1.bn2.weight"].shape == (512,)
    assert state["fc.weight"].shape == (1000, 512)
    assert _params(models.create("resnet18", num_classes=1000)) == 11_689_512


def test_resnet_option_b_shortcuts_and_width() -> None:
    model = models.create("cifar_resnet20", width=0.5)
    assert [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels] == [8, 16]
    shortcut = model.layer3[0].downsample
    assert (
        isinstance(shortcut[0], nn.Conv2d)
        and shortcut[0].kernel_size == (1, 1)
        and shortcut[0].stride == (2, 2)
    )
    assert isinstance(model.layer1[0].downsample, nn.Identity)


def test_food_cnns_pool_to_16x16_on_256_inputs() -> None:
    x = torch.randn(1, 3, 256, 256)
    for name in ("food_cnn", "food_cnn_dws"):
        model = models.create(name).eval()
        with torch.no_grad():
            features = model.features(x)
        assert features.shape == (1, 256, 16, 16)
    dws = models.create("food_cnn_dws")
    depthwise = [m for m in dws.features if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 7 and all(m.groups == m.in_channels for m in depthwise)
    assert sum(isinstance(m, nn.ReLU6) for m in dws.features) == 8


def test_mobilenet_student_uses_depthwise_convs() -> None:
    model = models.create("mobilenet_student", width=0.5, blocks=[(32, 1), (64, 2)])
    # stem 32 -> 16 at width 0.5; each depthwise conv runs on its input channels
    assert [b.depthwise.groups for b in model.blocks] == [16, 16]
    assert [b.pointwise.out_channels for b in model.blocks] == [16, 32]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_lenet_sizes() -> None:
    assert _params(models.create("lenet", input_size=8)) == 19_754
    assert models.create("lenet", input_size=8)(torch.randn(1, 1, 8, 8)).shape == (1, 10)
