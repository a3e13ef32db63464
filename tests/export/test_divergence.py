"""export_onnx(check=True) names the first graph node whose output departs from its PyTorch module."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from netcompress.core.errors import ExportMismatchError  # noqa: E402
from netcompress.export import export_onnx  # noqa: E402
from netcompress.export.divergence import first_divergence, module_calls  # noqa: E402
from netcompress.export.onnx_inputs import ExportCall, input_spec  # noqa: E402
from netcompress.quantization import quantize  # noqa: E402


class _Scale(torch.autograd.Function):
    """PyTorch scales by 2; its ONNX export (deliberately wrong) by 3."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, D102
        return x * 2

    @staticmethod
    def symbolic(g, x):  # noqa: ANN001, D102
        return g.op("Mul", x, g.op("Constant", value_t=torch.tensor(3.0)))


class BadScale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Scale.apply(x)


class Block(nn.Module):
    def __init__(self, bad: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.scale = BadScale() if bad else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.act(self.conv(x))) + x


def net(bad_block: int | None = None) -> nn.Module:
    torch.manual_seed(0)
    blocks = [Block(bad=i == bad_block) for i in range(3)]
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Sequential(*blocks), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()  # fmt: skip


def test_module_calls_rebuild_the_exporters_scopes():
    x = torch.randn(2, 3, 8, 8)
    calls, scopes = module_calls(ExportCall(net(), input_spec(x), None), [x])
    # unqualified names as torch.onnx writes them: "model.2.1" keeps its digits, "2.1.conv" becomes "conv"
    (conv,) = scopes["/model/model.2/model.2.1/conv"]
    assert calls[conv].module == "2.1.conv" and calls[conv].output.shape == (2, 8, 8, 8)
    assert calls[calls[conv].parent].module == "2.1"
    assert calls[calls[calls[conv].parent].parent].module == "2"
    assert [calls[i].module for i in scopes["/model/model.5"]] == ["5"]
    assert calls[scopes[""][0]].output is None  # the wrapper returns a tuple


def test_float_export_names_the_first_diverging_node(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ExportMismatchError) as err:
        export_onnx(net(bad_block=1), tmp_path / "bad.onnx", x)
    message = str(err.value)
    assert (
        "first diverging node: /model/model.2/model.2.1/scale/Mul (Mul, module 2.1.scale), 50.0% off"
        in message
    )
    assert re.search(
        r"differs from PyTorch by [\d.]+% of the largest output [\d.]+ \(tolerance 0\.01%\)", message
    )
    # the same model without the broken layer passes
    assert export_onnx(net(), tmp_path / "good.onnx", x)["check"]["max_rel_diff"] < 1e-4


def _alter_initializer(path, name, factor):
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, name))
            break
    else:
        raise AssertionError(f"{name} not in {[i.name for i in model.graph.initializer]}")
    onnx.save(model, str(path))


def test_int8_file_with_an_altered_weight_scale_names_that_conv(tmp_path):
    model = net()
    x = torch.randn(4, 3, 8, 8)
    qmodel = quantize(model, [torch.randn(8, 3, 8, 8) for _ in range(2)])
    path = tmp_path / "q.onnx"
    summary = export_onnx(qmodel, path, x, int8=True)
    assert summary["int8_op_counts"]["QLinearConv"] == 4
    found = first_divergence(qmodel, path, x, tolerance=0.05)
    assert found["exceeds"] is False and found["rel_diff"] < 0.05  # the exported file agrees node by node
    # the scale of block 1's conv weight, 1.6x in the file only: its QLinearConv output is the first to differ
    _alter_initializer(path, "model.2.1.conv.weight_fq.scale", 1.6)
    found = first_divergence(qmodel, path, x, tolerance=0.05)
    assert (found["node"], found["op_type"], found["module"], found["exceeds"]) == (
        "/model/conv_1/Conv",
        "QLinearConv",
        "act_quant._2_1_conv_out",
        True,
    )
    assert found["tensor"] == "/model/_2_1_conv_out/DequantizeLinear_output_0"
    assert found["rel_diff"] > 0.1


def test_dynamic_int8_bert_names_the_linear_whose_codes_changed(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99
    )
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    x = {"input_ids": torch.randint(1, 99, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    qmodel = quantize(bert, mode="dynamic")
    path = tmp_path / "bert.onnx"
    export_onnx(qmodel, path, x, int8=True)
    model = onnx.load(str(path))
    scope = "/model/encoder/layer.1/attention/self/query/"
    (matmul,) = [
        n for n in model.graph.node if n.name.startswith(scope) and n.op_type == "MatMulIntegerToFloat"
    ]
    codes = matmul.input[1]  # B: the int8 weight codes
    _alter_initializer(path, codes, 0)  # every weight code of that Linear to 0
    found = first_divergence(qmodel, path, x, tolerance=0.05)
    assert (found["node"], found["module"], found["exceeds"]) == (
        matmul.name,
        "encoder.layer.1.attention.self.query",
        True,
    )
    assert found["rel_diff"] > 0.9
