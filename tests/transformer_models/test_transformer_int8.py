"""Tiny Hugging Face BERT (random weights) quantized to int8 and exported: ONNX Runtime runs
integer MatMul kernels, matches PyTorch, takes another sequence length, and the file shrinks."""

from __future__ import annotations

import pytest
import torch

import netcompress as nc
from netcompress.core.inputs import output_tensor
from netcompress.core.methods import MethodData, apply
from netcompress.export import OrtModel, export_onnx
from netcompress.export.onnx import TOLERANCE
from netcompress.quantization.ptq import PTQStaticConfig

transformers = pytest.importorskip("transformers")

SEQ = 16
INTEGER_MATMULS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul")
LINEARS = 12  # 2 layers x (query, key, value, attention output, intermediate, output)


def _config():
    return transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=99,
        max_position_embeddings=64,
        num_labels=3,
    )


def _inputs(n: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 99, (n, seq), generator=gen)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[0, seq * 2 // 3 :] = 0  # one padded sentence
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module", params=["BertModel", "BertForSequenceClassification"])
def bert(request, tmp_path_factory):
    torch.manual_seed(0)
    model = getattr(transformers, request.param)(_config()).eval()
    example = _inputs(4, SEQ, seed=0)
    folder = tmp_path_factory.mktemp(request.param)
    float_summary = export_onnx(model, folder / "float.onnx", example)
    calib = [(_inputs(8, SEQ, seed=s), torch.zeros(8, dtype=torch.long)) for s in range(1, 3)]
    return model, example, calib, folder, float_summary


def _integer_matmuls(summary) -> int:
    return sum(summary["int8_op_counts"].get(op, 0) for op in INTEGER_MATMULS)


def test_float_export_has_named_int64_inputs_and_a_dynamic_sequence(bert):
    model, example, _, _, summary = bert
    assert summary["input_names"] == ["input_ids", "attention_mask"]
    assert summary["dynamic_axes"]["input_ids"] == {"0": "batch", "1": "sequence"}
    assert summary["check"]["input_sets"] == ["example", "random batch of 8", "shorter sequence"]
    assert summary["check"]["max_rel_diff"] < TOLERANCE[False]
    session = OrtModel(summary["path"]).session
    assert [i.type for i in session.get_inputs()] == ["tensor(int64)", "tensor(int64)"]


def test_dynamic_int8_runs_integer_matmuls(bert):
    model, example, _, folder, float_summary = bert
    qmodel = nc.quantize(model, mode="dynamic")
    summary = export_onnx(qmodel, folder / "dynamic.onnx", example, int8=True, check=True)
    assert _integer_matmuls(summary) >= LINEARS
    assert summary["dynamic_int8"]["kept_float"] == {}
    assert summary["check"]["max_rel_diff"] < TOLERANCE[True]
    assert "shorter sequence" in summary["check"]["input_sets"]
    assert summary["size_bytes"] < 0.7 * float_summary["size_bytes"]
    # another sequence length and batch than the export's, fed by name
    other = _inputs(3, 11, seed=9)
    with torch.no_grad():
        ref = output_tensor(qmodel(**other))
        flt = output_tensor(model(**other))
    got = OrtModel(summary["path"])(**other)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= TOLERANCE[True] * ref.abs().max()
    assert (got - flt).abs().max() <= 0.1 * flt.abs().max()  # and int8 stays close to float


def test_static_w8a8_quantizes_linears_and_keeps_norms_float(bert):
    model, example, calib, folder, float_summary = bert
    result = apply(model, PTQStaticConfig(num_calib_batches=2), MethodData(calib_loader=calib))
    floats = result.summary["float_modules"]
    assert floats["LayerNorm"] == 5 and floats["GELUActivation"] == 2  # 1 embedding + 2 per layer
    assert result.summary["num_quantized_layers"] >= LINEARS
    summary = export_onnx(result.model, folder / "static.onnx", example, int8=True, check=True)
    ops = summary["op_counts"]
    assert _integer_matmuls(summary) >= LINEARS
    assert ops.get("LayerNormalization", 0) == 5 and ops.get("Softmax", 0) == 2  # float ops stay float
    assert summary["check"]["max_rel_diff"] < TOLERANCE[True]
    assert summary["size_bytes"] < 0.7 * float_summary["size_bytes"]
    other = _inputs(2, 9, seed=5)
    with torch.no_grad():
        ref = output_tensor(result.model(**other))
    assert (OrtModel(summary["path"])(**other) - ref).abs().max() <= TOLERANCE[True] * ref.abs().max()


def test_named_outputs_export_several_tensors(bert, tmp_path):
    model, example, _, _, _ = bert
    names = ["last_hidden_state", "pooler_output"] if "pooler_output" in model(**example) else ["logits"]
    summary = export_onnx(model, tmp_path / "named.onnx", example, output_names=names)
    assert summary["output_names"] == names
    outs = OrtModel(summary["path"])(**example)
    outs = outs if isinstance(outs, tuple) else (outs,)
    with torch.no_grad():
        ref = model(**example)
    for name, got in zip(names, outs):
        assert torch.allclose(got, ref[name], atol=1e-5)
