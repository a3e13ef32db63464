"""LLM.int8()-style outlier split of a tiny BERT's Linears: exact in float, less int8 error, and the
exported file runs the integer kernels plus a float Gather + MatMul and matches PyTorch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.quantization import quantize
from netcompress.quantization.input_smoothing import smooth_inputs
from netcompress.quantization.outlier_split import OutlierSplitLinear, split_linear, split_outliers

from .conftest import OUTLIER, bert_batches, outlier_bert

transformers = pytest.importorskip("transformers")

FFN_OUT = r"re:encoder\.layer\.\d+\.output\.dense"


_batches = bert_batches


def _rel_err(model: nn.Module, ref: torch.Tensor, x: dict) -> float:
    with torch.no_grad():
        out = model(**x).last_hidden_state
    return float((out - ref).norm() / ref.norm())


def test_split_linear_moves_the_outlier_columns_to_a_float_path_and_keeps_the_function():
    torch.manual_seed(0)
    linear = nn.Linear(6, 3)
    absmax = torch.tensor([1.0, 9.0, 0.5, 2.0, 7.0, 1.0])
    split = split_linear(linear, absmax, 2)
    assert split.outliers.tolist() == [1, 4]
    assert split.keep.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert split.linear.weight[:, [1, 4]].abs().sum() == 0  # the int8 weight scales ignore them
    assert torch.equal(split.outlier_weight, linear.weight[:, [1, 4]].detach())
    assert split.range_kept == pytest.approx(2.0 / 9.0)
    assert split.linear is not linear and linear.weight[:, 1].abs().sum() > 0  # original untouched
    x = torch.randn(2, 5, 6)
    assert torch.allclose(split(x), linear(x), atol=1e-6)
    with pytest.raises(ConfigError, match="channels=6 must be in"):
        split_linear(linear, absmax, 6)


def test_tiny_bert_split_is_exact_in_float_and_cuts_dynamic_int8_error():
    model = outlier_bert()
    split, info = split_outliers(model, _batches(1), layers=[FFN_OUT], channels=2)
    assert list(info["layers"]) == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    for name, layer in info["layers"].items():
        assert layer["channels"][0] == OUTLIER and len(layer["channels"]) == 2
        assert layer["range_kept"] < 0.5  # the planted channel set the range
        assert isinstance(split.get_submodule(name), OutlierSplitLinear)
    assert info["max_rel_diff"] < 1e-5
    assert isinstance(model.get_submodule("encoder.layer.0.output.dense"), nn.Linear)  # input untouched
    x = _batches(7)[0]
    with torch.no_grad():
        ref = model(**x).last_hidden_state
    plain = _rel_err(quantize(model, mode="dynamic"), ref, x)
    qsplit = quantize(split, mode="dynamic")
    assert "encoder.layer.0.output.dense.linear" in dict(qsplit.named_modules())
    assert _rel_err(qsplit, ref, x) < 0.7 * plain


def test_split_merges_with_smoothing_into_one_mul():
    model = outlier_bert()
    smoothed, _ = smooth_inputs(model, _batches(1), alpha=0.5)
    split, info = split_outliers(smoothed, _batches(1), layers=[FFN_OUT + r"(\.linear)?"], channels=1)
    layer = split.get_submodule("encoder.layer.1.output.dense")
    inv = smoothed.get_submodule("encoder.layer.1.output.dense").inv_scale
    assert isinstance(layer, OutlierSplitLinear) and isinstance(layer.linear, nn.Linear)
    kept = torch.ones_like(inv, dtype=torch.bool)
    kept[layer.outliers] = False
    assert torch.equal(layer.keep[kept], inv[kept]) and layer.keep[~kept].abs().sum() == 0
    assert info["max_rel_diff"] < 1e-5


def test_split_names_what_it_cannot_find():
    with pytest.raises(ConfigError, match="no Linear matches 'encoder.nothing'"):
        split_outliers(outlier_bert(), _batches(1), layers=["encoder.nothing"])


def _channel_gathers(path) -> list[list[int]]:
    """The constant index lists of the file's Gathers on the channel (last) axis."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    found = []
    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type == "Gather" and axis in (2, -1) and node.input[1] in consts:
            found.append(consts[node.input[1]].tolist())
    return found


def test_split_dynamic_int8_exports_integer_kernels_and_a_float_gather(tmp_path):
    from netcompress.export import OrtModel, export_onnx

    model = outlier_bert()
    split, info = split_outliers(model, _batches(1), layers=[FFN_OUT], channels=2)
    qmodel = quantize(split, mode="dynamic")
    summary = export_onnx(qmodel, tmp_path / "split.onnx", _batches(3)[0], int8=True, check=True)
    assert summary["dynamic_int8"]["kept_float"] == {}
    assert len(summary["dynamic_int8"]["layers"]) == 12
    counts = summary["int8_op_counts"]
    assert counts.get("DynamicQuantizeMatMul", 0) + counts.get("MatMulIntegerToFloat", 0) == 12
    assert sorted(_channel_gathers(tmp_path / "split.onnx")) == sorted(
        layer["channels"] for layer in info["layers"].values()
    )
    assert summary["check"]["max_rel_diff"] < 1e-3
    x = _batches(9)[0]
    with torch.no_grad():
        ref = qmodel(**x).last_hidden_state
    got = OrtModel(summary["path"])(**x)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-3


def test_accuracy_aware_chooses_a_split_before_float():
    from netcompress.quantization import AccuracyAwareConfig, quantize_accuracy_aware

    model = outlier_bert()
    planted = "encoder.layer.1.output.dense"
    with torch.no_grad():  # one GELU channel 100x the others' range, varying by token
        model.get_submodule("encoder.layer.1.intermediate.dense").weight[OUTLIER] *= 100.0
        model.get_submodule(planted).weight[:, OUTLIER] /= 100.0
    fields = dict(mode="dynamic", min_cosine=0.99999, num_calib_batches=2, num_val_batches=3, max_trials=8)
    qmodel, summary = quantize_accuracy_aware(
        model, _batches(1), _batches(3, 3), outlier_channels=1, **fields
    )
    assert summary["search"]["baseline"]["cosine_mean"] < 0.99999
    assert next(iter(summary["search"]["sensitivity"])) == planted
    assert summary["met"] is True and summary["fallback_layers"] == {planted: "split"}
    assert [t["added"] for t in summary["search"]["trials"]] == [None, f"{planted}: split"]
    split = qmodel.get_submodule(planted)
    assert isinstance(split, OutlierSplitLinear) and split.outliers.tolist() == [OUTLIER]
    assert type(split.linear).__name__ == "QuantLinear"  # the rest still int8
    _, plain = quantize_accuracy_aware(model, _batches(1), _batches(3, 3), **fields)
    assert plain["fallback_layers"] == {planted: "float"}  # without splits the same layer goes float
    with pytest.raises(ConfigError, match="outlier_channels"):
        AccuracyAwareConfig(outlier_channels=-1)
