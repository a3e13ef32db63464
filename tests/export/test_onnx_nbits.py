"""Weight-only 2-8 bit Linear layers export as ONNX Runtime's MatMulNBits with netcompress's own codes."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from netcompress.export import export_onnx
from netcompress.export.onnx_contrib import unpack_rows
from netcompress.export.onnx_nbits import CONTAINER_BITS, swap_nbits_linears
from netcompress.quantization import quantize
from netcompress.quantization.blockwise import BlockwiseFakeQuantize, weight_codes

# accuracy_level 0: ORT dequantizes the same codes and scales to float, so only float
# reassociation separates it from the PyTorch weight-only model
EXACT = 1e-5


def linear_heavy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(256, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def batches(dim: int, n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, dim, generator=gen), torch.zeros(16)) for _ in range(n)]


def nbits_nodes(path) -> list[tuple[onnx.NodeProto, dict[str, np.ndarray]]]:
    """Each MatMulNBits node with its constant inputs by role."""
    graph = onnx.load(str(path)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    out = []
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            roles = ("A", "B", "scales", "zero_points", "g_idx", "bias")  # "" marks an omitted input
            out.append((node, {r: consts[i] for r, i in zip(roles, node.input) if i in consts}))
    return out


def test_int4_block32_file_is_a_fifth_of_float_and_matches_pytorch(tmp_path):
    model = linear_heavy()
    x = torch.randn(4, 256)
    q = quantize(model, mode="weight_only", bits=4, block_size=32)
    s = export_onnx(q, tmp_path / "int4.onnx", x, int8=True)
    f = export_onnx(model, tmp_path / "float.onnx", x)
    assert s["op_counts"]["MatMulNBits"] == 4 and "DequantizeLinear" not in s["op_counts"]
    assert s["int8_op_counts"] == {"MatMulNBits": 4}
    assert s["matmul_nbits"]["layers"] == ["0", "2", "4", "6"] and s["matmul_nbits"]["kept_float"] == {}
    assert s["check"]["max_rel_diff"] < EXACT
    # 4 bits + one float32 scale per 32 weights = 0.625 bytes per weight vs 4: measured 0.16x
    ratio = s["size_bytes"] / f["size_bytes"]
    assert 0.14 < ratio <= 0.2, ratio
    assert s["matmul_nbits"]["packed_bytes"] == pytest.approx(0.625 * 526_848, rel=1e-3)


def test_int4_file_is_at_most_0_6x_the_dynamic_int8_file(tmp_path):
    model = linear_heavy()
    x = torch.randn(4, 256)
    int8 = export_onnx(quantize(model, mode="dynamic", bits=8), tmp_path / "int8.onnx", x, int8=True)
    sizes = {}
    for block in (32, 128):
        q = quantize(model, mode="weight_only", bits=4, block_size=block)
        sizes[block] = export_onnx(q, tmp_path / f"int4_{block}.onnx", x, int8=True)["size_bytes"]
    # block 128: 0.53 bytes per weight against int8's 1.0 (+ per-channel scales); block 32 pays
    # 4 bytes of scale per 32 weights, 0.625: measured 0.54x and 0.63x
    assert sizes[128] <= 0.6 * int8["size_bytes"], (sizes, int8["size_bytes"])
    assert sizes[32] <= 0.65 * int8["size_bytes"]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_codes_and_zero_points_round_trip_through_the_file(tmp_path, bits, scheme):
    torch.manual_seed(bits)
    k, block = 100, 32  # K not a multiple of the block: the last block is zero-padded
    model = nn.Sequential(nn.Linear(k, 24), nn.ReLU(), nn.Linear(24, 7))  # K=24 < block 32
    q = quantize(model, mode="weight_only", bits=bits, block_size=block, scheme=scheme)
    s = export_onnx(q, tmp_path / "m.onnx", torch.randn(3, k), int8=True)
    assert s["check"]["max_rel_diff"] < EXACT
    container = CONTAINER_BITS[bits]
    assert s["matmul_nbits"]["container_bits"] == {"0": container, "2": container}
    offset = 2 ** (container - 1)
    for (node, consts), name in zip(nbits_nodes(tmp_path / "m.onnx"), ["0", "2"]):
        layer = q.get_submodule(name)
        fq = layer.weight_fq
        attrs = {a.name: a.i for a in node.attribute if a.name != "weight_prepacked"}  # ORT adds it
        n, kk = layer.layer.weight.shape
        n_blocks = -(-kk // block)
        assert attrs == {"K": kk, "N": n, "bits": container, "block_size": block, "accuracy_level": 0}
        assert consts["B"].shape == (n, n_blocks, block * container // 8) and consts["B"].dtype == np.uint8
        codes = unpack_rows(consts["B"].reshape(n, -1), container, n_blocks * block)[:, :kk] - offset
        assert np.array_equal(codes, weight_codes(fq, layer.layer.weight).numpy())
        assert np.allclose(consts["scales"], fq.scale.reshape(n, n_blocks).numpy())
        assert np.allclose(consts["bias"], layer.layer.bias.detach().numpy())  # ORT fused the Add
        if scheme == "symmetric":
            assert "zero_points" not in consts and node.input[3] == ""
        else:
            zp = consts["zero_points"]
            assert zp.shape == (n, -(-n_blocks * container // 8)) and zp.dtype == np.uint8
            unpacked = unpack_rows(zp, container, n_blocks) - offset
            assert np.array_equal(unpacked, fq.zero_point.reshape(n, n_blocks).numpy())
            assert unpacked.min() < 0 or bits >= 8 or unpacked.max() != unpacked.min()


def test_odd_k_block16_asymmetric_runs(tmp_path):
    model = nn.Sequential(nn.Linear(37, 5))
    q = quantize(model, mode="weight_only", bits=4, block_size=16, scheme="asymmetric")
    assert isinstance(q.get_submodule("0").weight_fq, BlockwiseFakeQuantize)
    assert q.get_submodule("0").weight_fq.scale.shape == (5 * 3,)
    s = export_onnx(q, tmp_path / "m.onnx", torch.randn(2, 37), int8=True)
    assert s["op_counts"]["MatMulNBits"] == 1 and s["check"]["max_rel_diff"] < EXACT


def test_per_channel_weights_export_with_repeated_scales(tmp_path):
    model = linear_heavy()
    q = quantize(model, mode="weight_only", bits=4, block_size=0, granularity="per_channel")
    s = export_onnx(q, tmp_path / "m.onnx", torch.randn(2, 256), int8=True)
    assert s["op_counts"]["MatMulNBits"] == 4 and s["check"]["max_rel_diff"] < EXACT
    node, consts = nbits_nodes(tmp_path / "m.onnx")[0]
    assert {a.name: a.i for a in node.attribute}["block_size"] == 128
    assert np.allclose(consts["scales"], consts["scales"][:, :1])  # one scale per row, repeated


def test_accuracy_level_4_runs_int8_activations_within_the_int8_tolerance(tmp_path):
    model = linear_heavy()
    q = quantize(model, mode="weight_only", bits=4, block_size=32, accuracy_level=4)
    s = export_onnx(q, tmp_path / "m.onnx", torch.randn(4, 256), int8=True)
    node, _ = nbits_nodes(tmp_path / "m.onnx")[0]
    assert {a.name: a.i for a in node.attribute}["accuracy_level"] == 4
    assert 0 < s["check"]["max_rel_diff"] < 0.05


def test_static_models_and_own_forward_linears_are_not_swapped(tmp_path):
    class Halved(nn.Linear):
        def forward(self, x):
            return 0.5 * super().forward(x)

    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), Halved(32, 8))
    wo = quantize(model, mode="weight_only", bits=4, block_size=32)
    _, info = swap_nbits_linears(copy.deepcopy(wo))
    assert info["layers"] == ["0"] and "has its own forward" in info["kept_float"]["2"]
    static = quantize(model, batches(32), bits=8, num_calib_batches=2)
    s = export_onnx(static, tmp_path / "static.onnx", torch.randn(2, 32), int8=True)
    assert "MatMulNBits" not in s["op_counts"] and "matmul_nbits" not in s
    assert swap_nbits_linears(copy.deepcopy(static))[1]["layers"] == []


def test_tiny_bert_int4_exports_matmulnbits_and_runs_in_ort(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99
    )
    bert = transformers.BertModel(cfg).eval()

    class Encoder(nn.Module):  # float inputs (embeddings), so the export check feeds the right dtype
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, embeds):
            return self.bert(inputs_embeds=embeds).last_hidden_state

    model = Encoder().eval()
    calib = [torch.randn(4, 8, 32) for _ in range(2)]
    q = quantize(
        model, calib, mode="weight_only", bits=4, block_size=16, rounding="gptq", num_calib_batches=2
    )
    s = export_onnx(q, tmp_path / "bert_int4.onnx", torch.randn(2, 8, 32), int8=True)
    linears = sum(isinstance(m, nn.Linear) for m in bert.modules())
    assert linears == 13  # 2 x (q, k, v, out, intermediate, output) + pooler
    assert len(s["matmul_nbits"]["layers"]) == 13
    # the pooler's output is unused (last_hidden_state only), so the exporter drops its node
    assert s["op_counts"]["MatMulNBits"] == 12
    assert s["check"]["max_rel_diff"] < 1e-4
