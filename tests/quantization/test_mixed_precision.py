"""Bit packing, the bit-packed file format, sensitivity and bit allocation under a byte budget."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.quantization import (
    allocate_bits,
    layer_sensitivity,
    load_quantized,
    mixed_precision_quantize,
    pack_bits,
    quantize,
    save_quantized,
    unpack_bits,
)
from netcompress.quantization.modules import quantizers


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 16), n=st.integers(0, 300), seed=st.integers(0, 1000))
def test_pack_round_trip_exact(bits, n, seed):
    codes = np.random.default_rng(seed).integers(0, 2**bits, size=n)
    data = pack_bits(codes, bits)
    assert len(data) == (n * bits + 7) // 8
    assert unpack_bits(data, bits, n).tolist() == codes.tolist()


def test_4bit_packs_two_per_byte():
    assert pack_bits(np.array([1, 15, 0, 7]), 4) == bytes([0xF1, 0x70])
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_bits(np.array([16]), 4)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(32, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    ).eval()


def _batches():
    gen = torch.Generator().manual_seed(3)
    return [
        (torch.randn(16, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(2)
    ]


@pytest.mark.parametrize("bits", [4, 7, 8])
def test_saved_file_is_small_and_loads_to_identical_outputs(bits):
    model = _mlp()
    qmodel = quantize(model, _batches(), bits=bits, act_bits=8)
    with tempfile.TemporaryDirectory() as tmp:
        info = save_quantized(qmodel, f"{tmp}/m.ncq")
        params = 32 * 128 + 128 * 64 + 64 * 10
        assert (
            info["packed_weight_bytes"]
            == (32 * 128 * bits + 7) // 8 + (128 * 64 * bits + 7) // 8 + (64 * 10 * bits + 7) // 8
        )
        assert info["size_bytes"] < params * bits / 8 + 6000  # header + biases + scales stay small
        template = quantize(
            model, _batches(), bits=8, act_bits=8
        )  # different bits: overwritten from the file
        restored = load_quantized(f"{tmp}/m.ncq", template)
    x = torch.randn(5, 32)
    with torch.no_grad():
        assert torch.equal(restored(x), qmodel(x))
    assert {n: q.bits for n, q in quantizers(restored).items()} == {
        n: q.bits for n, q in quantizers(qmodel).items()
    }


def test_load_rejects_wrong_file_and_template(tmp_path):
    bad = tmp_path / "bad.ncq"
    bad.write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="not a netcompress quantized file"):
        load_quantized(bad, _mlp())
    qmodel = quantize(_mlp(), _batches())
    save_quantized(qmodel, tmp_path / "m.ncq")
    with pytest.raises(CheckpointError, match="template quantizers differ"):
        load_quantized(tmp_path / "m.ncq", quantize(_mlp(), mode="weight_only"))


def test_sensitivity_grows_as_bits_shrink():
    sens = layer_sensitivity(_mlp(), _batches(), bits_options=(2, 4, 8))
    assert list(sens) == ["0", "3", "5"]
    for per_bits in sens.values():
        assert per_bits[2] > per_bits[4] > per_bits[8] >= 0


def test_allocate_bits_prefers_cheap_insensitive_layers():
    sens = {"big": {4: 0.01, 8: 0.0}, "small": {4: 0.5, 8: 0.0}}
    sizes = {"big": (10_000, 10), "small": (1_000, 10)}
    # all 8-bit: 11,000 + 160 bytes; big at 4-bit: 6,000 + 160
    assert allocate_bits(sens, sizes=sizes, budget_bytes=7_000) == {"big": 4, "small": 8}
    assert allocate_bits(sens, sizes=sizes, budget_bytes=20_000) == {"big": 8, "small": 8}
    with pytest.raises(ConfigError, match="unreachable"):
        allocate_bits(sens, sizes=sizes, budget_bytes=1_000)


def test_mixed_precision_meets_budget_and_file_is_under_it(tmp_path):
    model = _mlp()
    budget = 9_000  # all 8-bit would need about 14 kB on disk
    qmodel, summary = mixed_precision_quantize(model, _batches(), budget_bytes=budget, bits_options=(2, 4, 8))
    assert summary["file_bytes"] <= budget
    assert set(summary["bits"].values()) <= {2, 4, 8} and min(summary["bits"].values()) < 8
    info = save_quantized(qmodel, tmp_path / "m.ncq")
    assert info["size_bytes"] <= budget, info
    restored = load_quantized(tmp_path / "m.ncq", qmodel)
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert torch.equal(restored(x), qmodel(x))
