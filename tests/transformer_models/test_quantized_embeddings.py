"""int8 / int4 embedding tables (``embeddings=`` of the PTQ configs) on a tiny BERT from a config: the
exported file holds the integer table behind ``Gather`` / ``GatherBlockQuantized`` (not folded back to
float by ONNX Runtime's optimiser), ONNX Runtime matches PyTorch, and the bytes shrink as computed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, apply
from netcompress.export.onnx_contrib import unpack_rows
from netcompress.quantization.embeddings import QuantEmbedding, quantize_embeddings_
from netcompress.quantization.ptq import WeightOnlyConfig
from netcompress.quantization.summary import quantization_summary

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN, SEQ = 1000, 64, 12
TABLE_FLOAT_BYTES = 4 * VOCAB * HIDDEN  # 256,000: the word embeddings dominate this model
EXACT = 1e-5  # same codes and scales in both: only float reassociation separates them


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=32,
    )
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def _inputs(n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, SEQ, dtype=torch.long)
    mask[0, 8:] = 0
    return {"input_ids": torch.randint(0, VOCAB, (n, SEQ), generator=gen), "attention_mask": mask}


def _constants(path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _nodes(path, op: str) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(str(path)).graph.node if n.op_type == op]


def _quantize(model, **fields):
    return nc.quantize(model, mode="weight_only", bits=8, block_size=32, **fields)


def test_int8_table_is_gathered_from_int8_codes_and_matches_pytorch(bert, tmp_path):
    q = _quantize(bert, embeddings="int8")
    table = q.embeddings.word_embeddings
    assert isinstance(table, QuantEmbedding) and table.block_size == 0
    s = nc.export_onnx(q, tmp_path / "int8.onnx", _inputs(), int8=True)
    assert s["check"]["max_rel_diff"] < EXACT
    assert s["quantized_embeddings"]["ops"] == {
        "embeddings.word_embeddings": "Gather",
        "embeddings.position_embeddings": "Gather",
        "embeddings.token_type_embeddings": "Gather",
    }
    consts = _constants(s["path"])
    # the optimised file still gathers from the int8 table: no float (VOCAB, HIDDEN) tensor is left
    codes = table.codes().numpy().astype(np.int8)
    int8_tables = [k for k, v in consts.items() if v.dtype == np.int8 and v.shape == (VOCAB, HIDDEN)]
    assert len(int8_tables) == 1 and np.array_equal(consts[int8_tables[0]], codes)
    assert not [k for k, v in consts.items() if v.dtype == np.float32 and v.shape == (VOCAB, HIDDEN)]
    assert any(n.input[0] == int8_tables[0] for n in _nodes(s["path"], "Gather"))
    scales = [v for v in consts.values() if v.dtype == np.float32 and v.shape == (VOCAB, 1)]
    assert len(scales) == 1 and np.allclose(scales[0][:, 0], table.weight_fq.scale.numpy())


def test_int4_table_is_one_gather_block_quantized_with_the_pytorch_codes(bert, tmp_path):
    q = _quantize(bert, embeddings="int4")
    table = q.embeddings.word_embeddings
    assert table.block_size == 32 and table.weight_fq.bits == 4
    s = nc.export_onnx(q, tmp_path / "int4.onnx", _inputs(), int8=True)
    assert s["check"]["max_rel_diff"] < EXACT
    assert s["int8_op_counts"]["GatherBlockQuantized"] == 3
    consts = _constants(s["path"])
    node = next(n for n in _nodes(s["path"], "GatherBlockQuantized") if consts[n.input[0]].shape[0] == VOCAB)
    attrs = {a.name: a.i for a in node.attribute}
    assert attrs == {"bits": 4, "block_size": 32, "gather_axis": 0, "quantize_axis": 1}
    data, scales = consts[node.input[0]], consts[node.input[2]]
    assert data.dtype == np.uint8 and data.shape == (VOCAB, HIDDEN // 2)
    assert scales.shape == (VOCAB, HIDDEN // 32) and len(node.input) == 3  # symmetric: no zero points
    expected = table.codes().reshape(VOCAB, HIDDEN).numpy() + 8
    assert np.array_equal(unpack_rows(data, 4, HIDDEN), expected)
    assert np.allclose(scales.reshape(-1), table.weight_fq.scale.numpy())


def test_file_bytes_shrink_by_the_table_bytes(bert, tmp_path):
    ex = _inputs()
    sizes, packed, tensors = {}, {}, {}
    for mode in ("float", "int8", "int4"):
        s = nc.export_onnx(_quantize(bert, embeddings=mode), tmp_path / f"{mode}.onnx", ex, int8=True)
        sizes[mode] = s["size_bytes"]
        tensors[mode] = sum(v.nbytes for v in _constants(s["path"]).values())
        if mode != "float":
            packed[mode] = s["quantized_embeddings"]["packed_bytes"]
    # word table: int8 = 1 byte per value + a float scale per row; int4 = half a byte + a scale per 32
    word = {"int8": VOCAB * HIDDEN + 4 * VOCAB, "int4": VOCAB * HIDDEN // 2 + 4 * VOCAB * HIDDEN // 32}
    small = {"int8": 32 * HIDDEN + 4 * 32 + 2 * HIDDEN + 8, "int4": (32 + 2) * (HIDDEN // 2 + 8)}
    for mode in ("int8", "int4"):
        assert packed[mode] == word[mode] + small[mode]
        float_tables = 4 * (VOCAB + 32 + 2) * HIDDEN
        # the file's tensors shrink by exactly the tables' bytes; the file by that plus a few nodes
        assert tensors["float"] - tensors[mode] == float_tables - packed[mode]
        saved = sizes["float"] - sizes[mode]
        assert saved == pytest.approx(float_tables - packed[mode], abs=3_000), (mode, saved)
    assert sizes["int4"] / sizes["float"] < 0.45  # 4-bit Linears + a 4-bit table


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_embeddings_with_dynamic_and_static_int8_linears(bert, tmp_path, mode):
    calib = [_inputs(4, seed=s) for s in (1, 2)]
    q = nc.quantize(bert, calib if mode == "static" else None, mode=mode, embeddings="int8")
    s = nc.export_onnx(q, tmp_path / f"{mode}.onnx", _inputs(), int8=True)
    assert list(s["quantized_embeddings"]["ops"].values()) == ["Gather"] * 3
    assert s["int8_op_counts"].get("MatMulIntegerToFloat", 0) >= 1
    int8 = {
        k: v for k, v in _constants(s["path"]).items() if v.dtype == np.int8 and v.shape == (VOCAB, HIDDEN)
    }
    assert len(int8) == 1


def test_asymmetric_tables_carry_zero_points_and_match(bert, tmp_path):
    for mode, op in (("int4", "GatherBlockQuantized"), ("int8", "Gather")):
        q = _quantize(bert, embeddings=mode, scheme="asymmetric")
        assert int(q.embeddings.word_embeddings.weight_fq.zero_point.abs().max()) > 0
        s = nc.export_onnx(q, tmp_path / f"{mode}.onnx", _inputs(), int8=True)
        assert s["check"]["max_rel_diff"] < EXACT
        assert s["quantized_embeddings"]["ops"]["embeddings.word_embeddings"] == op
    gbq = next(n for n in _nodes(tmp_path / "int4.onnx", "GatherBlockQuantized"))
    assert len(gbq.input) == 4  # data, indices, scales, zero points


def test_quantized_rows_are_the_rounded_table(bert):
    q = _quantize(bert, embeddings="int4")
    table = q.embeddings.word_embeddings
    ids = torch.tensor([[3, 999, 3], [0, 1, 2]])
    with torch.no_grad():
        whole = table.weight_fq(table.layer.weight)  # the whole table fake-quantized block-wise
        rows = table(ids)
    assert torch.equal(rows, whole[ids])
    err = (whole - table.layer.weight).abs().reshape(VOCAB, -1, 32).amax(-1)
    assert bool((err <= table.weight_fq.scale.reshape(VOCAB, -1) / 2 + 1e-7).all())


def test_summary_counts_the_tables_at_their_bits(bert):
    result = apply(bert, WeightOnlyConfig(bits=8, block_size=32, embeddings="int4"), MethodData())
    info = result.summary["embeddings"]
    assert info["layers"] == [
        "embeddings.word_embeddings",
        "embeddings.position_embeddings",
        "embeddings.token_type_embeddings",
    ]
    assert info["block_size"] == 32 and info["float_bytes"] == 4 * (VOCAB + 32 + 2) * HIDDEN
    assert result.summary["layers"]["embeddings.word_embeddings"]["weight_bits"] == 4
    plain = quantization_summary(nc.quantize(bert, mode="weight_only", bits=8, block_size=32))
    # 4 float bytes per table value -> half a byte and 8 per block's scale and zero point
    saved = plain["weight_bytes"] - result.summary["weight_bytes"]
    assert saved == (VOCAB + 34) * HIDDEN * 4 - (VOCAB + 34) * (HIDDEN // 2 + 2 * 8)


def test_bad_options_name_the_key():
    with pytest.raises(ConfigError, match="embeddings"):
        WeightOnlyConfig(embeddings="int2")
    with pytest.raises(ConfigError, match="embedding_block_size=0"):
        WeightOnlyConfig(embeddings="int4", embedding_block_size=0)
    with pytest.raises(ConfigError, match="block_size=24"):
        WeightOnlyConfig(embeddings="int8", embedding_block_size=24)


def test_tables_that_cannot_be_quantized_stay_float_with_the_reason():
    model = nn.Sequential(nn.Embedding(10, 21), nn.Linear(21, 4))
    model.add_module("renorm", nn.Embedding(5, 8, max_norm=1.0))
    info = quantize_embeddings_(model, bits=4)
    assert info["layers"] == [] and "odd row length 21" in info["kept_float"]["0"]
    assert "max_norm" in info["kept_float"]["renorm"]
    assert quantize_embeddings_(model, bits=8)["layers"] == ["0"]
