"""benchmarks/ort_node_profile.py: per-op ORT profiles and the structural diff of two optimised graphs.

The structural test is the property the issue-13 batch-1 diagnosis rests on: on an EfficientNet-Lite
pattern (TF "same" padding in a conv subclass, BN, ReLU6, a residual add, global pooling, a head), the
ORT-optimised graph of the netcompress int8 file and that of ONNX Runtime's own quantizer (after
``quant_pre_process``) are the same node for node: same ops, attributes (conv pads, no ``Pad`` node),
uint8 activations with scalar qparams, per-channel int8 weights with all-zero zero points.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

import ort_node_profile as onp  # noqa: E402

from netcompress.export.onnx import export_onnx  # noqa: E402
from netcompress.quantization import quantize  # noqa: E402


class SamePadConv(nn.Conv2d):
    """TF "same" padding for a fixed image size, a ZeroPad2d applied in forward (as the published
    EfficientNet-Lite's ``Conv2dStaticSamePadding``)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, *, size: int, **kwargs) -> None:
        super().__init__(cin, cout, k, stride, **kwargs)
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        self.static_padding = nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class LiteBlock(nn.Module):
    """Stem (stride 2, same padding) -> depthwise -> project + skip add -> 1x1 head -> pool -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = SamePadConv(3, 8, 3, 2, size=16, bias=False), nn.BatchNorm2d(8)
        self.dw, self.bn1 = SamePadConv(8, 8, 3, size=8, groups=8, bias=False), nn.BatchNorm2d(8)
        self.proj, self.bn2 = SamePadConv(8, 8, 1, size=8, bias=False), nn.BatchNorm2d(8)
        self.head, self.bn3 = SamePadConv(8, 16, 1, size=8, bias=False), nn.BatchNorm2d(16)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn0(self.stem(x)))
        y = self.bn2(self.proj(self.act(self.bn1(self.dw(y))))) + y
        y = self.act(self.bn3(self.head(y)))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def _files(tmp_path):
    torch.manual_seed(0)
    model = LiteBlock().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    calib = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    qmodel = quantize(model, calib, granularity="per_channel", scheme="symmetric", num_calib_batches=2)
    export_onnx(qmodel, tmp_path / "nc.onnx", calib[0][:1], int8=True, check=False)
    export_onnx(model, tmp_path / "float.onnx", calib[0][:1], check=False)
    onp.ort_quantize_pre_processed(tmp_path / "float.onnx", tmp_path / "ort.onnx", [x.numpy() for x in calib])
    return tmp_path / "nc.onnx", tmp_path / "ort.onnx"


def test_int8_graph_is_node_for_node_the_one_of_ort_quantizer(tmp_path):
    nc_path, ort_path = _files(tmp_path)
    ours, theirs = onp.describe_graph(nc_path, threads=1), onp.describe_graph(ort_path, threads=1)
    assert onp.graph_differences(ours, theirs) == []
    convs = [n for n in ours if n["op"] == "QLinearConv"]
    assert len(convs) == 4 and not any(n["op"] in ("Pad", "Conv", "FusedConv") for n in ours)
    for n in convs:
        x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp = n["inputs"][1:8]
        assert x_zp.startswith("uint8=") and y_zp.startswith("uint8=")  # u8 activations, scalar
        assert x_scale.startswith("float32=") and y_scale.startswith("float32=")
        assert w.startswith("int8[") and w_zp.endswith(" zero") and w_zp.startswith("int8[")  # per channel
    assert [n["attrs"]["pads"] for n in convs] == [
        n["attrs"]["pads"] for n in theirs if n["op"] == "QLinearConv"
    ]
    assert convs[0]["attrs"]["pads"] == [0, 0, 1, 1]  # TF same, stride 2 on 16 px: the extra row at the end
    assert sum(n["op"] == "QLinearAdd" for n in ours) == 1


def test_graph_differences_names_a_changed_attribute_and_a_signed_activation():
    a = [
        {"op": "QLinearConv", "attrs": {"pads": [1, 1, 1, 1]}, "inputs": ["<act>", "float32=0.1", "uint8=3"]}
    ]
    b = [{"op": "QLinearConv", "attrs": {"pads": [0, 0, 1, 1]}, "inputs": ["<act>", "float32=0.1", "int8=0"]}]
    diff = onp.graph_differences(a, b)
    assert len(diff) == 2
    assert diff[0] == "#0 QLinearConv attrs {'pads': ([1, 1, 1, 1], [0, 0, 1, 1])}"
    assert diff[1].startswith("#0 QLinearConv inputs")
    c = [
        {"op": "QLinearConv", "attrs": {}, "inputs": ["int8[8, 3, 3, 3] -127..127", "int8[8] -1..2 nonzero"]}
    ]
    d = [{"op": "QLinearConv", "attrs": {}, "inputs": ["int8[8, 3, 3, 3] -128..127", "int8[8] 0..0 zero"]}]
    assert onp.graph_differences(c, d) == [
        "#0 QLinearConv zero-point arrays not all zero: ['int8[8] -1..2 nonzero']"
    ]


def test_profile_counts_every_node_of_the_optimised_graph(tmp_path):
    nc_path, ort_path = _files(tmp_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    pa, pb = onp.profile_files([nc_path, ort_path], x, threads=1, runs=5, warmup=2)
    ops = [n["op"] for n in onp.describe_graph(nc_path, threads=1)]
    assert {op: int(r["nodes"]) for op, r in pa["by_op"].items()} == {op: ops.count(op) for op in set(ops)}
    # the same kernels in both files (the netcompress file reshapes where ORT's flattens: no copy either way)
    assert {onp.RESHAPES.get(op, op) for op in pa["by_op"]} == {
        onp.RESHAPES.get(op, op) for op in pb["by_op"]
    }
    assert pa["kernel_us"] == pytest.approx(sum(r["us"] for r in pa["by_op"].values()))
    assert pa["kernel_us"] > 0 and pa["run_us_median"] > 0
