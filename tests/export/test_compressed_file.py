"""nc.save_compressed / nc.load_compressed: the Deep-Compression file (issue 16 item 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.export.compressed_file import MAGIC, float32_bytes, load_compressed, save_compressed
from netcompress.export.entropy_coding import code_lengths, huffman_decode, huffman_encode
from netcompress.export.tensor_coding import SegmentWriter, decode_tensor, encode_tensor
from tests.fresh_process import assert_fresh_load_equal


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def _deep_compressed() -> nn.Module:
    model = _net()
    nc.prune_unstructured_(model, amount=0.9, scope="layer")
    nc.cluster_weights_(model, clusters=16)
    return model


def test_huffman_round_trip_and_optimal_lengths():
    rng = np.random.default_rng(0)
    symbols = np.minimum(rng.geometric(0.4, size=5000) - 1, 30)
    stream = huffman_encode(symbols, alphabet=31)
    assert huffman_decode(stream.payload, stream.lengths, count=symbols.size, bits=stream.bits).tolist() == (
        symbols.tolist()
    )
    assert code_lengths(np.array([8, 4, 2, 1, 1])).tolist() == [1, 2, 3, 4, 4]
    assert code_lengths(np.array([2**i for i in range(30)])).max() == 16  # limited to 16 bits
    # a stream cut short is an error, not garbage
    with pytest.raises(CheckpointError, match="ends after"):
        huffman_decode(stream.payload[:10], stream.lengths, count=symbols.size)


def test_tensor_coding_is_bit_exact_and_uses_positions_for_sparse_tensors():
    torch.manual_seed(0)
    codebook = torch.randn(8)
    values = codebook[torch.randint(0, 8, (4096,))] * (torch.rand(4096) < 0.05)
    values = torch.where(values == 0, 0.0, values)
    special = torch.tensor([0.5, 0.0, float("nan"), 1.0] * 8)
    for tensor in (values, special, torch.zeros(0), torch.arange(40, dtype=torch.int64)):
        writer = SegmentWriter()
        entry = encode_tensor(tensor, writer)
        back = decode_tensor(entry, bytes(writer.body))
        assert back.dtype == tensor.dtype and back.shape == tensor.shape
        assert back.numpy().tobytes() == tensor.numpy().tobytes()
    writer = SegmentWriter()
    entry = encode_tensor(-values, writer)  # -0.0 (negative times mask) stored as 0.0: one fill value
    assert torch.equal(decode_tensor(entry, bytes(writer.body)), -values)
    assert "fill" in entry and writer.parts["positions"] > 0
    assert len(writer.body) < 4096 * 4 / 25  # ~205 kept values: gaps + 3-bit indices, not 16 KB


def test_pruned_clustered_model_round_trips_exactly_with_parts(tmp_path):
    model = _deep_compressed()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    summary = save_compressed(model, tmp_path / "m.ncz", example_inputs=x)
    assert set(summary["parts"]) == {"header", "structure", "positions", "indices", "codebooks", "dense"}
    assert sum(summary["parts"].values()) == summary["size_bytes"] == (tmp_path / "m.ncz").stat().st_size
    assert summary["float32_bytes"] == float32_bytes(_net()) == (3 * 16 * 9 + 16 + 16 * 32 * 9 + 32 + 330) * 4
    assert summary["compression_ratio"] > 5
    assert summary["encodings"]["gather"] == 3  # clustered weights rebuilt from codebook[indices]
    loaded = load_compressed(tmp_path / "m.ncz")
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_fresh_interpreter_loads_the_same_outputs(tmp_path):
    model = _deep_compressed()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    save_compressed(model, tmp_path / "m.ncz")
    assert_fresh_load_equal(tmp_path / "m.ncz", x, expected, tmp_path)


def test_quantized_model_stores_integer_codes_and_computes_the_same(tmp_path):
    from netcompress.quantization.ptq import freeze_quantizers_

    model = _net()
    x = torch.randn(2, 3, 8, 8)
    qmodel = nc.prepare_qat(model, bits=4, act_bits=8, calib_loader=[(x, torch.zeros(2))])
    freeze_quantizers_(qmodel).eval()
    with torch.no_grad():
        expected = qmodel(x)
    summary = save_compressed(qmodel, tmp_path / "q.ncz", example_inputs=x)
    assert summary["encodings"]["dequant"] == 3
    loaded = load_compressed(tmp_path / "q.ncz")
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)  # exact: the fake-quantized weights are the same codes
    assert summary["size_bytes"] < float32_bytes(model) / 3  # 4-bit codes, Huffman-coded, + structure


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:-40] + bytes([d[-40] ^ 1]) + d[-39:], "checksum mismatch"),
        (lambda d: d + b"\0", "extra bytes"),
        (lambda d: d[:8] + (7).to_bytes(2, "little") + d[10:], "version 7"),
        (lambda d: b"PK\x03\x04" + d[4:], "not a netcompress compressed model"),
        (lambda d: d[:5], "not a netcompress compressed model"),
    ],
)
def test_damaged_files_are_clear_errors_naming_the_file(tmp_path, damage, message):
    path = tmp_path / "m.ncz"
    save_compressed(_deep_compressed(), path)
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    bad = tmp_path / "bad.ncz"
    bad.write_bytes(damage(data))
    with pytest.raises(CheckpointError, match=message) as err:
        load_compressed(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_compressed(tmp_path / "missing.ncz")


def test_a_recipe_export_section_writes_the_compressed_file(tmp_path):
    from netcompress.recipes import run_recipe

    recipe = {
        "name": "tiny",
        "seed": 0,
        "model": {"name": "mlp", "in_features": 16, "hidden": [32], "num_classes": 3},
        "data": {
            "name": "synthetic",
            "num_samples": 60,
            "input_shape": [16],
            "num_classes": 3,
            "batch_size": 16,
        },
        "steps": [
            {"op": "prune", "method": "l1_unstructured", "amount": 0.8},
            {"op": "cluster", "method": "kmeans", "clusters": 4, "save": False},
        ],
        "evaluate": {"latency": False},
        "report": {"plots": False},
        "export": {"compressed": True},
    }
    run_recipe(recipe, out_dir=tmp_path / "run", progress=False)
    path = tmp_path / "run" / "export" / "model.dc"
    model = load_compressed(path)
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(weights) == 2 and all(w.unique().numel() <= 4 for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.8, abs=0.01)  # pruned positions stayed zero through clustering


def test_format2_fillers_skip_positions_without_a_value():
    from netcompress.export.tensor_coding import _skip_entries, _skip_positions

    rng = np.random.default_rng(1)
    positions = np.unique(rng.integers(0, 5000, size=60))
    positions = np.concatenate([positions, [6000, 6001, 9999]])  # long gaps and a gap of zero
    gaps = np.diff(positions, prepend=-1) - 1
    for bits in (1, 2, 3, 5, 12):
        symbols, real = _skip_entries(gaps, bits)
        assert int(real.sum()) == positions.size and symbols.max() <= (1 << bits) - 1
        assert _skip_positions(symbols, bits).tolist() == positions.tolist()
    # 40 kept values of two kinds, 1,000 apart: the value stream holds 40 one-bit codes, no filler values
    tensor = torch.zeros(40_000)
    tensor[::1000] = torch.tensor([0.25, -0.5] * 20)
    writer = SegmentWriter()
    entry = encode_tensor(tensor, writer)
    assert entry["kept"] == 40 and entry["entries"] > 40  # fillers bridge the gaps
    assert writer.parts["indices"] == 5  # 40 bits
    assert torch.equal(decode_tensor(entry, bytes(writer.body)), tensor)


def test_format1_sparse_entries_still_decode():
    from netcompress.export.tensor_coding import _huffman, writer_codebook

    # format 1, gap_bits=2 (span 4): gaps 9 and 7 are fillers (symbol 3, holding the fill value) + 1 and 3
    tensor = torch.tensor([0.0] * 9 + [0.5] + [0.0] * 7 + [-1.0])
    writer = SegmentWriter()
    book = np.array([-1.0, 0.0, 0.5], dtype=np.float32).view(np.int32)
    entry = {
        "enc": "coded",
        "dtype": "float32",
        "shape": [18],
        "fill": writer.add(np.array([0], dtype=np.int32).tobytes(), "codebooks"),
        "gap_bits": 2,
        "entries": 5,
        "positions": _huffman(np.array([3, 3, 1, 3, 3]), 4, writer, "positions"),
        "values": {
            "codebook": writer_codebook(writer, book, torch.int32),
            "huffman": _huffman(np.array([1, 1, 2, 1, 0]), 3, writer, "indices"),
        },
    }
    assert torch.equal(decode_tensor(entry, bytes(writer.body)), tensor)


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    with torch.no_grad():  # BN statistics of a trained net: many distinct floats, stored raw
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.normal_()
        model[1].bias.normal_()
    nc.prune_unstructured_(model, amount=0.8, scope="layer")
    nc.cluster_weights_(model, clusters=8)
    return model.eval()


def test_dense_float16_option_round_trips_the_rounded_model_in_a_fresh_process(tmp_path):
    from netcompress.export.compressed_file import round_dense_

    model = _bn_net()
    x = torch.randn(4, 3, 8, 8)
    full = save_compressed(model, tmp_path / "f32.ncz", example_inputs=x)
    half = save_compressed(model, tmp_path / "f16.ncz", example_inputs=x, dense_dtype="float16")
    assert full["rounded"] == [] and full["dense_dtype"] == "float32"
    # BN's four vectors and the Linear's weight and bias are raw; codebooks (define the weights) never rounded
    assert half["rounded"] == ["1.bias", "1.running_mean", "1.running_var", "1.weight", "5.bias"]
    assert full["parts"]["dense"] - half["parts"]["dense"] == 2 * (4 * 16 + 10)
    assert half["size_bytes"] < full["size_bytes"]
    reference = round_dense_(_bn_net(), half["rounded"])
    assert not torch.equal(reference[1].running_var, model[1].running_var)  # the rounding did something
    with torch.no_grad():
        expected = reference(x)
    check = "assert m[1].running_var.dtype == torch.float32"
    assert_fresh_load_equal(tmp_path / "f16.ncz", x, expected, tmp_path, check)
    loaded = load_compressed(tmp_path / "f16.ncz")
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    with pytest.raises(ConfigError, match="dense_dtype must be one of"):
        save_compressed(model, tmp_path / "bad.ncz", dense_dtype="int8")
    assert not (tmp_path / "bad.ncz").exists()


def test_format2_files_still_load_and_format3_metadata_is_smaller(tmp_path):
    import hashlib
    import json
    import struct
    import zlib

    from netcompress.export.compressed_container import DIGEST, meta_bytes, unpack

    model = _bn_net()
    x = torch.randn(2, 3, 8, 8)
    save_compressed(model, tmp_path / "m.ncz", example_inputs=x)
    data = (tmp_path / "m.ncz").read_bytes()
    table, description, body = unpack(data, "m.ncz")
    # the same content in the layout format 2 wrote (two zlib streams, absolute segment starts)
    table_bytes = zlib.compress(json.dumps(table, separators=(",", ":")).encode(), 9)
    structure = zlib.compress(description.encode(), 9)
    old = struct.pack("<8sHQII", MAGIC, 2, len(body), len(table_bytes), len(structure))
    old += table_bytes + structure + body
    old += hashlib.blake2b(old, digest_size=DIGEST).digest()
    (tmp_path / "v2.ncz").write_bytes(old)
    loaded = load_compressed(tmp_path / "v2.ncz")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta_bytes(data) < len(old) - len(body)  # LZMA + relative starts beat two zlib streams
    bad = tmp_path / "bad.ncz"
    bad.write_bytes(old[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        load_compressed(bad)


def test_format3_metadata_damaged_under_a_valid_checksum_is_a_clear_error(tmp_path):
    import hashlib

    from netcompress.export.compressed_container import DIGEST

    save_compressed(_deep_compressed(), tmp_path / "m.ncz")
    data = bytearray((tmp_path / "m.ncz").read_bytes())
    data[30] ^= 0xFF  # inside the LZMA2 metadata; the digest recomputed, as a forger would
    body = bytes(data[:-DIGEST])
    (tmp_path / "bad.ncz").write_bytes(body + hashlib.blake2b(body, digest_size=DIGEST).digest())
    with pytest.raises(CheckpointError, match="bad.ncz") as err:
        load_compressed(tmp_path / "bad.ncz")
    assert "damaged" in str(err.value) or "cannot be decoded" in str(err.value) or "missing" in str(err.value)
