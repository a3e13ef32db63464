"""profile(): exact counts, bytes on disk, latency keys, peak memory, and the model left as it was."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.evaluation import (
    parameter_counts,
    peak_activation_bytes,
    profile,
    state_dict_size_bytes,
    tensor_bytes,
)

CONTRACT_KEYS = {
    "params",
    "nonzero_params",
    "macs",
    "size_bytes",
    "latency_ms",
    "latency_p95_ms",
    "latency_b64_ms",
    "latency_b64_p95_ms",
    "peak_memory_bytes",
    "threads",
}


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 224 params, 8*64*27 = 13,824 MACs on 8x8
        nn.BatchNorm2d(8),  # 16 params
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),  # 5,130 params, 5,120 MACs
    )


def test_parameter_counts_after_zeroing() -> None:
    layer = nn.Linear(10, 5)
    with torch.no_grad():
        layer.weight[:2].zero_()
        layer.bias.fill_(1.0)
    assert parameter_counts(layer) == {"params": 55, "nonzero_params": 35}


def test_parameter_counts_see_through_prune_masks() -> None:
    layer = nn.Linear(10, 5)
    with torch.no_grad():
        layer.bias.fill_(1.0)
    torch_prune.l1_unstructured(layer, "weight", amount=20)
    # weight_orig keeps its values; the mask zeroes 20 of 50 weights
    assert int(torch.count_nonzero(layer.weight_orig)) == 50
    assert parameter_counts(layer) == {"params": 55, "nonzero_params": 35}


def test_shared_parameters_counted_once() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert parameter_counts(model)["params"] == 20


def test_profile_without_latency_is_exact_and_fast() -> None:
    model = _net()
    with torch.no_grad():
        model[4].weight[:5].zero_()  # 5 * 512 zeros
    stats = profile(model, torch.randn(4, 3, 8, 8), latency=False)
    assert set(stats) >= CONTRACT_KEYS
    assert stats["params"] == 224 + 16 + 5130
    # BN bias starts at zero: 8 more zeros
    assert stats["nonzero_params"] == 5370 - 2560 - 8
    assert stats["sparsity"] == pytest.approx(2568 / 5370)
    assert stats["macs"] == 8 * 64 * 27 + 5120  # per sample, although 4 samples were passed
    assert stats["latency_ms"] is None and stats["latency_b64_ms"] is None
    assert stats["threads"] == torch.get_num_threads()


def test_size_bytes_is_the_saved_state_dict_and_drops_with_the_model() -> None:
    big = profile(nn.Linear(100, 100), torch.randn(1, 100), latency=False)["size_bytes"]
    small = profile(nn.Linear(100, 10), torch.randn(1, 100), latency=False)["size_bytes"]
    assert small > 0
    data_bytes = (100 * 90 + 90) * 4  # the float32 values that disappear
    assert 0 <= (big - small) - data_bytes < 1024  # the rest is zip bookkeeping
    assert big == state_dict_size_bytes(nn.Linear(100, 100))


def test_peak_memory_of_a_linear_chain() -> None:
    model = nn.Sequential(
        nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 500), nn.ReLU(), nn.Linear(500, 10)
    )
    # peak while ReLU writes its 1x1000 output with the 1x1000 Linear output still alive
    assert peak_activation_bytes(model, torch.randn(1, 1000)) == 8000
    stats = profile(model, torch.randn(1, 1000), latency=False)
    assert stats["peak_activation_bytes"] == 8000
    assert stats["peak_memory_bytes"] == tensor_bytes(model) + 8000
    assert tensor_bytes(model) == 4 * (1000 * 1001 + 500 * 1001 + 10 * 501)


def test_peak_memory_counts_in_place_ops_once() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, 4, 1))
    # conv1 output (16x32x32 floats) is alive while conv2 writes 4x32x32; in-place ReLU adds nothing
    assert peak_activation_bytes(model, torch.randn(1, 3, 32, 32)) == (16 + 4) * 32 * 32 * 4


def test_profile_with_latency_and_model_unchanged() -> None:
    model = _net().train()
    before = copy.deepcopy(model.state_dict())
    threads = torch.get_num_threads()
    stats = profile(model, torch.randn(1, 3, 8, 8), batch_sizes=(1, 4), warmup=1, repeats=3, threads=1)
    assert stats["threads"] == 1 and torch.get_num_threads() == threads
    assert stats["latency_repeats"] == {"1": 3, "4": 3}
    assert 0 < stats["latency_ms"] <= stats["latency_p95_ms"]
    assert 0 < stats["latency_b4_ms"] <= stats["latency_b4_p95_ms"]
    assert stats["latency_b64_ms"] is None  # not asked for, but the contract key exists
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_max_seconds_stops_timing_early() -> None:
    stats = profile(
        nn.Linear(8, 2), torch.randn(1, 8), batch_sizes=(1,), warmup=0, repeats=1000, max_seconds=0.0
    )
    assert stats["latency_repeats"] == {"1": 1}


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="example_inputs"):
        profile(nn.Linear(2, 2), "not a tensor", latency=False)
    with pytest.raises(ConfigError, match="batch_sizes"):
        profile(nn.Linear(2, 2), torch.randn(1, 2), batch_sizes=(0,))


class _SparseWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        dense = torch.zeros(10, 20)
        dense[0, :5] = 1.0
        self.register_buffer("weight", dense.to_sparse_csr())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.weight @ x.t()).t()


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_buffers_count_stored_bytes_and_dense_macs() -> None:
    model = _SparseWeight()
    # 5 float values + 11 row pointers + 5 column indices (int64)
    assert tensor_bytes(model) == 5 * 4 + 11 * 8 + 5 * 8
    stats = profile(model, torch.randn(1, 20), latency=False)
    assert stats["macs"] == 200  # MACs are dense: the counter sees a 10x20 matmul
    assert stats["peak_memory_bytes"] == tensor_bytes(model) + stats["peak_activation_bytes"]
