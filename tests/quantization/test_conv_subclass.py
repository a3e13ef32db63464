"""Conv subclasses with their own forward: BN folded when the forward allows it, kernel quantized, exported."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc
from netcompress.core.methods import MethodData, apply
from netcompress.quantization.bn_folding import fold_bn_and_report
from netcompress.quantization.ptq import PTQStaticConfig


class SamePadConv(nn.Conv2d):
    """TensorFlow "same" padding computed in forward (as efficientnet-pytorch's Conv2dDynamicSamePadding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class StdConv(nn.Conv2d):
    """Weight standardisation: the kernel is normalised per output channel in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = SamePadConv(3, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = StdConv(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)))
        y = F.relu(self.b2(self.c2(y)))
        return self.fc(y.mean(dim=(2, 3)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = Net()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def test_same_padding_subclass_folds_and_weight_standardisation_is_kept_with_reason():
    net = _net()
    x = torch.randn(2, 3, 15, 15)
    gm, summary = fold_bn_and_report(net)
    assert summary["folded"] == [["c1", "b1"]]
    assert summary["bn_left"] == ["b2"]
    assert summary["not_folded"][0][:2] == ["c2", "b2"] and "not affine" in summary["not_folded"][0][2]
    assert torch.allclose(gm(x), net(x), atol=1e-5)


def test_own_forward_quantizes_the_effective_kernel_and_exports(tmp_path):
    net = _net()
    calib = [(torch.randn(8, 3, 16, 16), torch.zeros(8)) for _ in range(3)]
    result = apply(net, PTQStaticConfig(bits=8), MethodData(calib_loader=calib))
    q = result.model
    # the weight quantizer of the standardised conv saw the standardised kernel (unit std per channel)
    fq = q.get_submodule("c2").weight_fq
    w = net.c2.weight
    std_w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
    expected = std_w.detach().abs().amax(dim=(1, 2, 3)) / 127
    assert torch.allclose(fq.scale, expected, rtol=1e-4)
    assert q.get_submodule("c1").stride == (2, 2)  # the wrapper answers for the layer's attributes
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ref, qout = net(x), q(x)
    sqnr = 10 * torch.log10(ref.pow(2).mean() / (ref - qout).pow(2).mean())
    assert sqnr > 20
    exported = nc.export_onnx(q, tmp_path / "m.onnx", x, int8=True, check=True)
    assert exported["check"]["max_abs_diff"] < 0.05 * float(qout.abs().max()) + 1e-3


class TwiceConv(nn.Conv2d):
    """Calls its kernel twice: no single quantized kernel covers it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias) + self._conv_forward(x, 2 * self.weight, None)


class NeedsSixteen(nn.Linear):
    """Only runs on inputs with a fixed leading size, which a probe input does not have."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == 16
        return F.linear(x, self.weight, self.bias)


def test_layers_whose_own_forward_cannot_be_quantized_stay_float_with_a_reason():
    net = nn.Sequential(TwiceConv(3, 4, 3), nn.ReLU(), nn.Flatten(), NeedsSixteen(4 * 6 * 6, 3)).eval()
    calib = [(torch.randn(16, 3, 8, 8), torch.zeros(16)) for _ in range(2)]
    static = apply(net, PTQStaticConfig(bits=8), MethodData(calib_loader=calib)).summary
    assert static["float_layers"] == ["0"] and "makes 2 conv/linear calls" in static["float_reasons"]["0"]
    assert "3" in static["layers"]  # calibration shows its kernel
    weight_only = apply(net, nc.quantization.WeightOnlyConfig(bits=8), MethodData()).summary
    assert weight_only["float_layers"] == ["0", "3"]
    assert "failed on a probe input" in weight_only["float_reasons"]["3"]
