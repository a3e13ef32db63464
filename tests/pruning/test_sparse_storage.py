"""Sparse storage: bit-exact round trips, bytes that fall with sparsity, damaged files named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core import CheckpointError, ConfigError
from netcompress.pruning.masks import apply_mask
from netcompress.pruning.sparse_storage import (
    _Blob,
    _decode_tensor,
    _encode_tensor,
    dense_size_bytes,
    load_sparse,
    save_sparse,
)
from netcompress.pruning.unstructured import prune_unstructured


def _convnet() -> nn.Sequential:
    """A conv net of realistic size: 539,786 parameters."""
    chans = [3, 32, 64, 128, 128, 256]
    layers: list[nn.Module] = []
    for cin, cout in zip(chans, chans[1:]):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)]
    return nn.Sequential(*layers)


def _small() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)
    )


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return (
            torch.equal(a.view(torch.int32), b.view(torch.int32))
            if a.dtype == torch.float32
            else torch.equal(a, b)
        )
    return torch.equal(a, b)


def test_parameter_count_of_the_reference_net():
    assert sum(p.numel() for p in _convnet().parameters()) == 539_786


@pytest.mark.parametrize("amount", [0.0, 0.5, 0.9, 0.99])
def test_round_trip_is_bit_exact(tmp_path, amount):
    model = _small()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].num_batches_tracked.fill_(7)
        model[0].weight[0, 0, 0, 0] = -0.0  # signed zero must survive
    prune_unstructured(model, amount=amount, scope="layer")
    save_sparse(model, tmp_path / "m.ncz")
    fresh = load_sparse(tmp_path / "m.ncz", _small())
    a, b = model.state_dict(), fresh.state_dict()
    assert list(a) == list(b)
    assert all(_bits_equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(model.eval()(x), fresh.eval()(x))


def test_mask_that_differs_from_nonzero_pattern_is_stored(tmp_path):
    layer = nn.Linear(40, 30)
    mask = torch.rand(30, 40) > 0.5
    apply_mask(layer, "weight", mask)
    with torch.no_grad():
        layer.weight[mask] = torch.where(torch.rand(int(mask.sum())) > 0.9, 0.0, layer.weight[mask])
    save_sparse(layer, tmp_path / "l.ncz")
    fresh = load_sparse(tmp_path / "l.ncz", nn.Linear(40, 30))
    assert torch.equal(fresh.weight_mask, mask) and torch.equal(fresh.weight, layer.weight)


def test_bytes_fall_with_sparsity_and_90_percent_is_under_a_quarter(tmp_path):
    sizes = []
    for amount in (0.0, 0.5, 0.9):
        torch.manual_seed(0)
        model = _convnet()
        prune_unstructured(model, amount=amount, scope="global")
        info = save_sparse(model, tmp_path / f"m{amount}.ncz")
        assert info["size_bytes"] == (tmp_path / f"m{amount}.ncz").stat().st_size
        sizes.append((info["size_bytes"], info["dense_size_bytes"]))
    assert sizes[0][0] > sizes[1][0] > sizes[2][0]
    dense = sizes[2][1]
    assert dense == dense_size_bytes(_convnet())  # masks are not counted in the dense baseline
    assert sizes[0][0] <= dense  # never worse than torch.save
    assert sizes[1][0] / dense < 0.56
    assert sizes[2][0] / dense < 0.14  # measured 0.125-0.13; the bound asked for is 0.25


def _round_trip(t: torch.Tensor) -> tuple[dict, torch.Tensor]:
    blob = _Blob()
    entry = _encode_tensor("t", t, "float32", blob)
    return entry, _decode_tensor(entry, b"".join(blob.chunks))


def test_each_encoding_round_trips_and_is_chosen_by_size():
    dense = torch.randn(100)
    entry, out = _round_trip(dense)
    assert entry["encoding"] == "dense" and torch.equal(out, dense)
    half = torch.where(torch.arange(1000) % 2 == 0, torch.randn(1000), 0.0)
    entry, out = _round_trip(half)
    assert entry["encoding"] == "bitmap" and torch.equal(out, half)
    assert entry["parts"][0][1] == 125 and entry["parts"][1][1] == 500 * 4
    far = torch.zeros(4000)
    far[:300] = torch.arange(1, 301).float()
    far[1000] = -2.0  # one gap of 701 needs two 8-bit fillers: cheaper than 16-bit gaps everywhere
    entry, out = _round_trip(far)
    assert entry["encoding"] == "relative" and entry["bits"] == 8 and torch.equal(out, far)
    assert entry["parts"][0][1] == 303 and entry["parts"][1][1] == 303 * 4
    sparse = torch.zeros(4000)
    sparse[[5, 2000, 3999]] = 1.0  # few entries, long gaps: 16-bit gaps without fillers win
    entry, out = _round_trip(sparse)
    assert entry["bits"] == 16 and entry["parts"][0][1] == 3 * 2 and torch.equal(out, sparse)
    entry, out = _round_trip(torch.zeros(3, 5))
    assert entry["encoding"] == "relative" and torch.equal(out, torch.zeros(3, 5))
    ints = torch.arange(6).reshape(2, 3)
    entry, out = _round_trip(ints)
    assert entry["encoding"] == "dense" and torch.equal(out, ints)


def test_float16_values_halve_the_values(tmp_path):
    model = _convnet()
    prune_unstructured(model, amount=0.5)
    exact = save_sparse(model, tmp_path / "a.ncz")
    half = save_sparse(model, tmp_path / "b.ncz", values_dtype="float16")
    assert half["size_bytes"] < 0.62 * exact["size_bytes"]
    fresh = load_sparse(tmp_path / "b.ncz", _convnet())
    diff = (fresh[0].weight - model[0].weight).abs().max().item()
    assert 0 < diff < 1e-3 and torch.equal(fresh[0].weight_mask, model[0].weight_mask)
    with pytest.raises(ConfigError, match="values_dtype"):
        save_sparse(model, tmp_path / "c.ncz", values_dtype="int8")


def test_damaged_or_missing_files_raise_checkpoint_error_naming_the_path(tmp_path):
    model = _small()
    prune_unstructured(model, amount=0.5)
    path = tmp_path / "m.ncz"
    save_sparse(model, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ncz"]  # atomic write leaves no temp file
    with pytest.raises(CheckpointError, match="missing.ncz"):
        load_sparse(tmp_path / "missing.ncz", _small())
    raw = path.read_bytes()
    cases = {
        "flipped.ncz": raw[:-5] + bytes([raw[-5] ^ 0xFF]) + raw[-4:],
        "truncated.ncz": raw[: len(raw) // 2],
        "magic.ncz": b"PK\x03\x04" + raw[4:],
        "empty.ncz": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=name):
            load_sparse(tmp_path / name, _small())
    wrong = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_sparse(path, wrong)
