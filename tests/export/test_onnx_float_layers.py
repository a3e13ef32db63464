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
