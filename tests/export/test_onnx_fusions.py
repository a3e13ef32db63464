"""ONNX Runtime fuses every quantized convolution of a ReLU6 network, saturated ranges included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.export.onnx import export_onnx
from netcompress.quantization import quantize
from netcompress.quantization.placement import scale_within

pytest.importorskip("onnxruntime")


class SaturatingNet(nn.Module):
    """Conv -> ReLU6 -> Conv -> ReLU6 -> pool -> Linear, the EfficientNet-Lite pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.act = nn.ReLU6()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.b(self.act(self.a(x))))
        return self.head(y.mean(dim=(2, 3)))


def test_scale_within_is_the_largest_float32_scale_under_the_limit():
    s = scale_within(torch.tensor([6.0 / 255, 0.01, 0.5]), 255)
    # a saturated ReLU6's scale: above 6 in double (the old test), not in float32 (ORT's test)
    assert float(torch.tensor(6.0 / 255)) * 255 > 6.0 and float(torch.tensor(6.0 / 255) * 255) <= 6.0
    assert float(s[0]) == float(torch.tensor(6.0 / 255))  # kept as it is: no code changes
    assert bool((s * 255 <= 6.0).all())
    assert float(s[1]) == float(torch.tensor(0.01))  # already under: unchanged
    assert float(s[2]) == float(s[0])  # a range beyond 6 is narrowed to 6


def test_saturated_relu6_ranges_are_absorbed_and_every_conv_runs_int8(tmp_path):
    torch.manual_seed(0)
    model = SaturatingNet().eval()
    data = [torch.randn(8, 3, 8, 8) * 10 for _ in range(2)]  # ReLU6 saturates: ranges end at exactly 6
    qmodel = quantize(model, data, act_observer="minmax", num_calib_batches=2)
    assert not any(isinstance(m, nn.ReLU6) for m in qmodel.modules())  # both absorbed
    summary = export_onnx(qmodel, tmp_path / "q.onnx", data[0][:1], int8=True)
    # before: scale * 255 tested in double (6.0000001 > 6), ReLU6 kept: ORT ran both convs as float FusedConv
    assert summary["int8_op_counts"].get("QLinearConv") == 2
    assert "FusedConv" not in summary["op_counts"] and "Conv" not in summary["op_counts"]
    assert summary["check"]["max_rel_diff"] <= 0.05


class Residual(nn.Module):
    """Two quantized branches added: ORT fuses the QDQ Add into QLinearAdd only with scalar qparams."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = self.b(y) + y
        return self.head(self.c(y).mean(dim=(2, 3)))


def test_per_tensor_qdq_exports_scalar_qparams_and_the_residual_add_runs_int8(tmp_path):
    import onnx

    torch.manual_seed(0)
    data = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    qmodel = quantize(Residual().eval(), data, num_calib_batches=2)
    summary = export_onnx(qmodel, tmp_path / "r.onnx", data[0][:1], int8=True)
    assert summary["int8_op_counts"].get("QLinearAdd") == 1 and "Add" not in summary["op_counts"]
    assert summary["check"]["max_rel_diff"] <= 0.05
    graph = onnx.load(str(tmp_path / "r.onnx")).graph
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    inits = {i.name: list(i.dims) for i in graph.initializer}
    assert qdq and all(inits.get(n.input[1], []) == [] for n in qdq)  # scalar scales


class ChainedResiduals(nn.Module):
    """Two residual blocks in a row: the second block's skip input is the first block's Add output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(8, 8, 1) for _ in range(2))
        self.out = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        for block in self.blocks:
            y = block(y) + y
        return self.head(self.out(y).mean(dim=(2, 3)))


def test_a_quantized_block_input_also_feeds_its_skip_add_so_every_add_runs_int8(tmp_path):
    torch.manual_seed(0)
    data = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    qmodel = quantize(ChainedResiduals().eval(), data, num_calib_batches=2)
    summary = export_onnx(qmodel, tmp_path / "c.onnx", data[0][:1], int8=True)
    # before: the second Add took the first one's float output and ran float
    assert summary["int8_op_counts"].get("QLinearAdd") == 2 and "Add" not in summary["op_counts"]
    assert summary["check"]["max_rel_diff"] <= 0.05


class PoolFlattenHead(nn.Module):
    """torchvision's head: conv -> ReLU -> adaptive avgpool -> torch.flatten(x, 1) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def test_flatten_before_a_quantized_linear_lets_global_pooling_run_int8(tmp_path):
    torch.manual_seed(0)
    data = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    qmodel = quantize(PoolFlattenHead().eval(), data, num_calib_batches=2)
    summary = export_onnx(qmodel, tmp_path / "q.onnx", data[0][:1], int8=True)
    # before: DQ -> GlobalAveragePool -> Flatten -> Q; ORT does not move a Q across a Flatten, so the
    # pooling ran float between an extra DQ and Q (ORT's own quantizer's file: QLinearGlobalAveragePool)
    assert summary["qdq_rewrites"] == {"flatten_to_reshape": 1}
    ops = summary["op_counts"]
    assert ops.get("QLinearGlobalAveragePool") == 1 and "GlobalAveragePool" not in ops
    assert ops.get("QuantizeLinear") == 1 and ops.get("DequantizeLinear") == 1  # graph input and output only
    assert ops.get("QLinearConv") == 1 and ops.get("QGemm") == 1 and "Flatten" not in ops
    assert summary["check"]["max_rel_diff"] <= 0.05


def test_flatten_to_reshape_gives_the_same_outputs_and_leaves_other_axes():
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from netcompress.export.onnx_rewrites import flatten_to_reshape

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 5])
    outs = [helper.make_tensor_value_info(f"y{a}", TensorProto.FLOAT, [None, None]) for a in (1, 2)]
    nodes = [helper.make_node("Flatten", ["x"], [f"y{a}"], axis=a, name=f"f{a}") for a in (1, 2)]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 17)]
    )
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)}
    before = ort.InferenceSession(model.SerializeToString()).run(None, feed)
    assert flatten_to_reshape(model) == 1  # axis=2 gives (n*3, 20): no Reshape to [0, -1] writes that
    assert [n.op_type for n in model.graph.node] == ["Reshape", "Flatten"]
    onnx.checker.check_model(model)
    after = ort.InferenceSession(model.SerializeToString()).run(None, feed)
    assert [a.shape for a in after] == [(2, 60), (6, 20)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
