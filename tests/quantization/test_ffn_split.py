"""FFN down-projection outlier split (ffn_split.py) and outlier-only input scaling on a tiny BERT: exact
in float, less dynamic int8 error, and an exported file with integer kernels and no Mul / Gather on the
FFN activation, matching PyTorch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.quantization import quantize
from netcompress.quantization.ffn_split import (
    FFNInputSplit,
    FFNOutputSplit,
    find_ffn_pairs,
    split_ffn_outliers,
)
from netcompress.quantization.input_smoothing import ScaledInputLinear, outlier_scale, smooth_inputs
from netcompress.quantization.outlier_split import split_outliers

from .conftest import OUTLIER, bert_batches, outlier_bert

pytest.importorskip("transformers")

FFN_OUT = r"re:encoder\.layer\.\d+\.output\.dense"
FFN_IN = r"re:encoder\.layer\.\d+\.intermediate\.dense"


def _out(model: nn.Module, x: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).last_hidden_state


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_ffn_split_finds_the_pairs_is_exact_in_float_and_cuts_int8_error():
    model = outlier_bert()
    split, info = split_ffn_outliers(model, bert_batches(1), layers=[FFN_OUT], channels=2)
    assert list(info["layers"]) == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    for i in (0, 1):
        layer = info["layers"][f"encoder.layer.{i}.output.dense"]
        assert layer["input_layer"] == f"encoder.layer.{i}.intermediate.dense"
        assert layer["activation"] == "gelu"
        assert layer["channels"][0] == OUTLIER and len(layer["channels"]) == 2
        assert layer["range_kept"] < 0.5
        first = split.get_submodule(f"encoder.layer.{i}.intermediate.dense")
        second = split.get_submodule(f"encoder.layer.{i}.output.dense")
        assert isinstance(first, FFNInputSplit) and isinstance(second, FFNOutputSplit)
        assert first.carry is second.carry
        rows = second.outliers
        # the int8 path never sees the outlier channels: W1 rows and b1 zero, W2 columns zero
        assert first.inner.weight[rows].abs().sum() == 0 and first.inner.bias[rows].abs().sum() == 0
        assert second.linear.weight[:, rows].abs().sum() == 0
        orig = model.get_submodule(f"encoder.layer.{i}.intermediate.dense")
        assert torch.equal(first.rows_weight, orig.weight[rows].detach())
    assert info["max_rel_diff"] < 1e-5
    x = bert_batches(7)[0]
    ref = _out(model, x)
    assert _rel(_out(split, x), ref) < 1e-5  # float: the same function
    assert model.get_submodule("encoder.layer.0.intermediate.dense").bias[OUTLIER] == 25.0  # untouched
    plain = _rel(_out(quantize(model, mode="dynamic"), x), ref)
    qsplit = quantize(split, mode="dynamic")
    names = dict(qsplit.named_modules())
    assert type(names["encoder.layer.0.intermediate.dense.inner"]).__name__ == "QuantLinear"
    assert type(names["encoder.layer.0.output.dense.linear"]).__name__ == "QuantLinear"
    assert _rel(_out(qsplit, x), ref) < 0.5 * plain


def test_ffn_split_on_smoothed_inputs_stays_exact_and_exports(tmp_path):
    from netcompress.export import OrtModel, export_onnx

    model = outlier_bert()
    smoothed, sinfo = smooth_inputs(
        model, bert_batches(1), layers=[r"re:.*(query|key|value|attention\.output\.dense)", FFN_IN], outliers=2
    )
    assert sinfo["outliers"] == 2 and "encoder.layer.0.intermediate.dense" in sinfo["scaled"]
    split, info = split_ffn_outliers(smoothed, bert_batches(1), layers=[FFN_OUT], channels=2)
    first = split.get_submodule("encoder.layer.1.intermediate.dense")
    assert isinstance(first.inner, ScaledInputLinear)  # its Mul stays, the float rows read raw x
    assert info["max_rel_diff"] < 1e-5
    x = bert_batches(8)[0]
    assert _rel(_out(split, x), _out(model, x)) < 1e-5
    qmodel = quantize(split, mode="dynamic")
    summary = export_onnx(qmodel, tmp_path / "s.onnx", bert_batches(3)[0], int8=True, check=True)
    kernels = summary["int8_op_counts"]
    assert kernels.get("DynamicQuantizeMatMul", 0) + kernels.get("MatMulIntegerToFloat", 0) == 12
    # q/k/v read one scaled input: one Mul per block for them, one for the FFN input (the attention
    # output's scale is folded into the value rows), one DynamicQuantizeLinear shared by q/k/v
    assert summary["op_counts"]["Mul"] - _graph_counts_plain(model, tmp_path)["Mul"] == 4
    assert _rel(OrtModel(summary["path"])(**x), _out(qmodel, x)) < 1e-3


def _graph_counts_plain(model: nn.Module, tmp_path) -> dict[str, int]:
    from netcompress.export import export_onnx

    summary = export_onnx(quantize(model, mode="dynamic"), tmp_path / "p.onnx", bert_batches(3)[0], int8=True)
    return summary["op_counts"]


def test_outlier_scale_moves_only_the_largest_channels():
    s = outlier_scale(torch.tensor([1.0, 8.0, 2.0, 6.0, 0.5]), 2)
    assert s.tolist() == [1.0, 4.0, 1.0, 3.0, 1.0]
    assert outlier_scale(torch.tensor([3.0, 3.0, 3.0]), 1).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="outliers=3 must be in"):
        outlier_scale(torch.ones(3), 3)


def test_ffn_split_errors_name_the_problem():
    with pytest.raises(ConfigError, match="no Linear matches 'encoder.nothing'"):
        split_ffn_outliers(outlier_bert(), bert_batches(1), layers=["encoder.nothing"])
    with pytest.raises(UnsupportedModelError, match="no Linear feeds encoder.layer.0.attention.output.dense"):
        find_ffn_pairs(outlier_bert(), bert_batches(1), ["encoder.layer.0.attention.output.dense"])
    split, _ = split_ffn_outliers(outlier_bert(), bert_batches(1), layers=[FFN_OUT], channels=1)
    with pytest.raises(UnsupportedModelError, match="ran before its FFN input layer"):
        split.get_submodule("encoder.layer.0.output.dense")(torch.randn(2, 3, 37))


def _graph_counts(path) -> tuple[dict[str, int], list[list[int]]]:
    """Op counts of the file and the index lists of its constant Gathers on the last axis."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    counts: dict[str, int] = {}
    gathers = []
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type == "Gather" and axis in (2, -1) and node.input[1] in consts:
            gathers.append(consts[node.input[1]].tolist())
    return counts, gathers


def test_ffn_split_exports_integer_kernels_with_fewer_mul_and_gather_than_the_mask_split(tmp_path):
    from netcompress.export import OrtModel, export_onnx

    model = outlier_bert()
    example = bert_batches(3)[0]
    old, _ = split_outliers(model, bert_batches(1), layers=[FFN_OUT], channels=2)
    new, _ = split_ffn_outliers(model, bert_batches(1), layers=[FFN_OUT], channels=2)
    summaries = {}
    for name, split in (("old", old), ("new", new)):
        qmodel = quantize(split, mode="dynamic")
        summaries[name] = export_onnx(qmodel, tmp_path / f"{name}.onnx", example, int8=True, check=True)
        summary = summaries[name]
        assert summary["dynamic_int8"]["kept_float"] == {} and len(summary["dynamic_int8"]["layers"]) == 12
        kernels = summary["int8_op_counts"]
        assert kernels.get("DynamicQuantizeMatMul", 0) + kernels.get("MatMulIntegerToFloat", 0) == 12
        assert summary["check"]["max_rel_diff"] < 1e-3
        x = bert_batches(9)[0]
        got = OrtModel(summary["path"])(**x)
        assert _rel(got, _out(qmodel, x)) < 1e-3
    old_counts, old_gathers = _graph_counts(tmp_path / "old.onnx")
    new_counts, new_gathers = _graph_counts(tmp_path / "new.onnx")
    assert len(old_gathers) == 2 and new_gathers == []  # no Gather of channels on the FFN activation
    assert new_counts.get("Mul", 0) <= old_counts.get("Mul", 0) - 2  # nor a keep-mask Mul


def test_ffn_split_int8_model_saves_and_loads_with_its_carry_shared(tmp_path):
    from netcompress.export import model_file

    split, _ = split_ffn_outliers(outlier_bert(), bert_batches(1), layers=[FFN_OUT], channels=2)
    qmodel = quantize(split, mode="dynamic")
    model_file.save(qmodel, tmp_path / "q.nc", allow_modules=("transformers",))
    back = model_file.load(tmp_path / "q.nc", allow_modules=["transformers"])
    layer = back.encoder.layer[1]
    assert layer.intermediate.dense.carry is layer.output.dense.carry  # one hand-over per FFN
    assert layer.intermediate.dense.carry is not back.encoder.layer[0].output.dense.carry
    x = bert_batches(5)[0]
    assert torch.equal(_out(back, x), _out(qmodel, x))


class _ReluFFN(nn.Module):
    """A hand-written FFN whose first Linear is named ``linear`` (not a wrapper's child), ReLU between."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(8, 16)
        self.out = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.linear(x)))


def test_ffn_split_finds_a_relu_pair_in_a_hand_written_ffn():
    model = _ReluFFN().eval()
    with torch.no_grad():
        model.linear.bias[3] = 30.0  # a ReLU channel far above the others
    batches = [torch.randn(4, 5, 8) for _ in range(2)]
    assert find_ffn_pairs(model, batches, ["out"]) == {"out": ("linear", "relu")}
    split, info = split_ffn_outliers(model, batches, layers=["out"], channels=1)
    assert info["layers"]["out"]["channels"] == [3] and info["max_rel_diff"] < 1e-6
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        assert torch.allclose(split(x), model(x), atol=1e-5)
