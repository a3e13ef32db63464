"""Depthwise-separable replacement: shapes kept, exact parameter and MAC counts, SVD init."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from netcompress.architecture import DepthwiseSeparable, to_depthwise_separable
from netcompress.core.errors import ConfigError
from netcompress.core.methods import METHODS, MethodData


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)  # first conv: kept
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 1)  # 1x1: kept
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # grouped: kept
        self.conv3 = nn.Conv2d(16, 32, 5, padding=4, dilation=2)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv0(x))
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.conv3(self.dw(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def test_param_and_mac_counts_by_hand_and_shapes_kept():
    model = Small().eval()  # eval: the forwards below must not move BN statistics
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    new, summary = to_depthwise_separable(model, example_inputs=x[:1])
    # before: conv0 224 + conv1 1152 + bn1 32 + conv2 272 + dw 160 + conv3 12832 + head 330
    assert summary["params_before"] == 15002
    # conv1 -> 8*9 + 2*8 + 8*16 = 216; conv3 -> 16*25 + 2*16 + 16*32 + 32 = 976
    assert summary["params_after"] == 15002 - 1152 + 216 - 12832 + 976 == 2210
    assert sum(p.numel() for p in new.parameters()) == 2210
    assert [r["name"] for r in summary["layers"]] == ["conv1", "conv3"]
    assert {r["name"]: r["reason"][:5] for r in summary["skipped"]} == {
        "conv0": "first",
        "conv2": "1x1 k",
        "dw": "group",
    }
    conv1 = summary["layers"][0]
    assert (conv1["macs_before"], conv1["macs_after"]) == (16 * 8 * 8 * 8 * 9, 8 * 8 * 8 * 9 + 16 * 8 * 8 * 8)
    assert summary["macs_before"] - summary["macs_after"] == sum(
        r["macs_before"] - r["macs_after"] for r in summary["layers"]
    )
    assert isinstance(new.conv1, DepthwiseSeparable) and isinstance(new.conv1.act, nn.ReLU6)
    assert new.conv1.depthwise.stride == (2, 2) and new.conv3.depthwise.dilation == (2, 2)
    assert new(x).shape == model(x).shape == (2, 10)
    for name, feat in (("conv1", (2, 16, 8, 8)), ("conv3", (2, 32, 8, 8))):
        captured = []
        getattr(new, name).register_forward_hook(lambda m, i, o, c=captured: c.append(o.shape))
        new(x)
        assert tuple(captured[0]) == feat
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k])
    assert isinstance(model.conv1, nn.Conv2d)


def test_svd_init_reproduces_rank1_per_channel_conv_and_beats_random_init():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, padding=1, stride=2)
    with torch.no_grad():  # W[o, c] = p[o, c] * d[c]: exactly depthwise-separable
        conv.weight.copy_(torch.randn(10, 6, 1, 1) * torch.randn(1, 6, 3, 3))
    model = nn.Sequential(conv)
    x = torch.randn(3, 6, 9, 9)
    exact, _ = to_depthwise_separable(model, skip_first=False, activation=None, bn=False, init="svd")
    assert (exact(x) - model(x)).abs().max().item() < 1e-5
    with torch.no_grad():
        conv.weight.copy_(torch.randn(10, 6, 3, 3))
    svd, _ = to_depthwise_separable(model, skip_first=False, activation=None, bn=False, init="svd")
    rand, _ = to_depthwise_separable(model, skip_first=False, activation=None, bn=False)
    err_svd = (svd(x) - model(x)).pow(2).mean().item()
    err_rand = (rand(x) - model(x)).pow(2).mean().item()
    assert err_svd < 0.75 * err_rand  # rank 1 keeps ~30% of a random 10x9 slice's energy: 25.6 vs 36.3


def test_conv1d_include_pickling_and_errors():
    model = nn.Sequential(nn.Conv1d(1, 4, 9), nn.Conv1d(4, 8, 5, padding=2), nn.Conv1d(8, 8, 3))
    new, summary = to_depthwise_separable(model, include=["1"], activation="relu", bn=True)
    assert [r["name"] for r in summary["layers"]] == ["1"] and isinstance(new[1].bn, nn.BatchNorm1d)
    # 4*5 + 2*4 + 4*8 + 8 = 68 replaces 4*8*5 + 8 = 168
    assert summary["params_before"] - summary["params_after"] == 100
    x = torch.randn(2, 1, 40)
    assert new(x).shape == model(x).shape
    buf = io.BytesIO()
    torch.save(new, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    new.eval(), again.eval()
    assert torch.equal(again(x), new(x))
    with pytest.raises(ConfigError, match="activation='gelu9'"):
        to_depthwise_separable(model, activation="gelu9")
    with pytest.raises(ConfigError, match="'conv9' matches no"):
        to_depthwise_separable(model, include=["conv9"])


def test_step_registered_and_uses_example_inputs(tmp_path):
    spec = METHODS.get("architecture/depthwise_separable")
    cfg = spec.config.from_dict({"activation": "relu6", "exclude": ["conv3"]})
    ctx = MethodData(example_inputs=torch.randn(1, 3, 16, 16), out_dir=tmp_path, num_classes=10)
    result = spec.fn(Small(), cfg, ctx)
    assert [r["name"] for r in result.summary["layers"]] == ["conv1"]
    assert result.summary["params_after"] == 15002 - 1152 + 216
    assert result.summary["macs_after"] < result.summary["macs_before"]
    with pytest.raises(ConfigError, match="unknown key 'activaton'"):
        spec.config.from_dict({"activaton": "relu"})


def test_food_cnn_conversion_count_explained_against_e3_student():
    models = pytest.importorskip("netcompress.models")
    if "food_cnn" not in models.list():
        pytest.skip("food_cnn not registered")
    model = models.create("food_cnn", num_classes=11)
    new, summary = to_depthwise_separable(model, activation="relu6", example_inputs=torch.randn(1, 3, 64, 64))
    assert summary["params_before"] == 2_168_203 and summary["converted"] == 7
    # E3's hand-written student has 256,779: it drops each conv's BN(out) (2 * 1248 = 2496 params)
    # and gives the depthwise a bias (16 + 32 + 64 + 128 + 3 * 256 = 1008); we keep the BN and
    # let the inner BN(in) take the depthwise bias's role: 256,779 + 2496 - 1008
    assert summary["params_after"] == 256_779 + 2496 - 1008 == 258_267
    assert (summary["macs_before"], summary["macs_after"]) == (48_958_208, 7_402_240)
