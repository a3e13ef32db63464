"""int8 export names the quantized layers ONNX Runtime still runs in float, and warns when none is integer."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import netcompress as nc


class Untraceable(nn.Module):
    """Data-dependent Python control flow: torch.fx cannot trace it, so quantize wraps the Linear eagerly."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            x = x * 0
        return self.head(x)


class Traceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def _quantized(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    loader = [(torch.randn(16, 8), torch.randint(0, 4, (16,))) for _ in range(2)]
    return nc.quantize(model.eval(), loader, mode="static")


def _export(model: nn.Module, path) -> tuple[dict, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = nc.export_onnx(model, path, torch.randn(4, 8), int8=True)
    return s, [str(w.message) for w in caught if "int8 export" in str(w.message)]


class UntraceableConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            x = x * 0
        return self.conv(x)


def test_eager_head_exports_as_an_integer_matmul(tmp_path):
    # before: DQ -> Gemm with a float output, which ORT ran as a float Gemm: int8_op_counts {} and no word said
    s, messages = _export(_quantized(Untraceable()), tmp_path / "u.onnx")
    assert s["int8_op_counts"] == {"MatMulIntegerToFloat": 1} and "Gemm" not in s["op_counts"]
    assert s["qdq_rewrites"] == {"float_gemm_to_integer_matmul": 1}
    assert s["float_layers"] == [] and messages == []
    assert s["check"]["max_rel_diff"] < 1e-4  # the same arithmetic as the fake-quantized model


def test_no_integer_kernel_names_the_float_layers_and_warns(tmp_path):
    torch.manual_seed(0)
    loader = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,)))]
    q = nc.quantize(UntraceableConv().eval(), loader, mode="static")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = nc.export_onnx(q, tmp_path / "c.onnx", loader[0][0], int8=True)
    messages = [str(w.message) for w in caught if "int8 export" in str(w.message)]
    assert s["int8_op_counts"] == {}  # eager Conv: DQ -> Conv with a float output, no QLinearConv fusion
    assert [(f["layer"], f["op"]) for f in s["float_layers"]] == [("conv", "Conv")]
    assert "float output" in s["float_layers"][0]["reason"]
    assert len(messages) == 1
    assert messages[0].startswith("int8 export: no integer kernel in the graph; layers left float: conv (")


def test_traced_head_is_an_integer_kernel_and_nothing_is_named(tmp_path):
    torch.manual_seed(0)
    s, messages = _export(_quantized(Traceable()), tmp_path / "t.onnx")
    assert s["int8_op_counts"] == {"QGemm": 1} and "qdq_rewrites" not in s  # already integer: not rewritten
    assert s["float_layers"] == [] and messages == []


def test_float_export_has_no_float_layers_entry(tmp_path):
    s = nc.export_onnx(Traceable().eval(), tmp_path / "f.onnx", torch.randn(4, 8))
    assert "float_layers" not in s


@pytest.mark.parametrize("name, expected", [("/model/head/Gemm", "head"), ("/model/a/b.0/MatMul_1", "a.b.0"),
                                            ("Gemm_3", "Gemm_3")])
def test_layer_name_from_node_name(name, expected):
    from netcompress.export.onnx_float_layers import layer_name

    assert layer_name(name, "Gemm") == expected


def _gemm_graph(quantized_output: bool):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (4, 8)).astype(np.int8), "w"),
        numpy_helper.from_array(np.array([0.01, 0.02, 0.03, 0.04], np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["wd"], axis=0),
        helper.make_node("Gemm", ["xd", "wd", "b"], ["g" if quantized_output else "y"], transB=1),
    ]
    if quantized_output:
        nodes += [helper.make_node("QuantizeLinear", ["g", "x_scale", "x_zp"], ["gq"]),
                  helper.make_node("DequantizeLinear", ["gq", "x_scale", "x_zp"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_float_gemm_rewrite_keeps_values_and_leaves_quantized_outputs_alone():
    import copy

    import numpy as np

    from netcompress.export.onnx_rewrites import float_gemm_to_integer_matmul

    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    for quantized_output, expected in ((False, 1), (True, 0)):
        model = _gemm_graph(quantized_output)
        rewritten = copy.deepcopy(model)
        assert float_gemm_to_integer_matmul(rewritten) == expected
        ops = [n.op_type for n in rewritten.graph.node]
        assert ("Gemm" in ops) == quantized_output
        np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=0, atol=1e-5)
