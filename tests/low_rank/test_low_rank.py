"""Low-rank factorisation: exact at full rank, exact parameter counts, rank by energy/budget."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.methods import METHODS, MethodData
from netcompress.low_rank import LowRank, factorize, factorize_layer, rank_for_budget, rank_for_energy


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


@pytest.mark.parametrize(
    ("layer", "method", "full_rank", "x"),
    [
        (nn.Linear(12, 7), "linear", 7, torch.randn(4, 12)),
        (nn.Conv2d(5, 6, 3, stride=2, padding=1), "conv_channel", 6, torch.randn(2, 5, 9, 9)),
        (
            nn.Conv2d(5, 6, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
            "conv_spatial",
            15,
            torch.randn(2, 5, 9, 11),
        ),
        (nn.Conv2d(4, 3, (3, 5), padding="same"), "conv_spatial", 12, torch.randn(2, 4, 7, 8)),
        (nn.Conv1d(3, 8, 5, padding=2, stride=2), "conv_channel", 8, torch.randn(2, 3, 20)),
    ],
)
def test_full_rank_reproduces_outputs(layer, method, full_rank, x):
    block = factorize_layer(layer, rank=full_rank, method=method)
    assert isinstance(block, LowRank) and block.rank == full_rank
    assert block(x).shape == layer(x).shape
    assert _max_diff(block, layer, x) < 1e-4


@pytest.mark.parametrize(
    ("layer", "method", "params"),
    [
        (nn.Linear(64, 32), "linear", 8 * (64 + 32) + 32),
        (nn.Linear(64, 32, bias=False), "linear", 8 * (64 + 32)),
        (nn.Conv2d(16, 32, 3), "conv_channel", 8 * 16 * 9 + 8 * 32 + 32),
        (nn.Conv2d(16, 32, 3), "conv_spatial", 8 * 16 * 3 + 32 * 8 * 3 + 32),
    ],
)
def test_rank_r_has_exact_parameter_count(layer, method, params):
    block = factorize_layer(layer, rank=8, method=method)
    assert sum(p.numel() for p in block.parameters()) == params


def _known_spectrum_linear(singular_values: list[float], out_f: int = 30, in_f: int = 20) -> nn.Linear:
    g = torch.Generator().manual_seed(0)
    q1, _ = torch.linalg.qr(torch.randn(out_f, out_f, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(in_f, in_f, generator=g, dtype=torch.float64))
    s = torch.zeros(out_f, in_f, dtype=torch.float64)
    s[range(len(singular_values)), range(len(singular_values))] = torch.tensor(
        singular_values, dtype=torch.float64
    )
    layer = nn.Linear(in_f, out_f)
    with torch.no_grad():
        layer.weight.copy_((q1 @ s @ q2.T).float())
    return layer


def test_energy_picks_rank_on_known_singular_values():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5])  # energies 16, 9, 4, 1, 0.25 of 30.25: 16 / 30.25 = 0.52893
    expected = {0.5: 1, 0.5289: 1, 0.529: 2, 0.9: 3, 0.95: 3, 0.96: 4, 0.99: 4, 0.995: 5, 1.0: 5}
    assert {e: rank_for_energy(s, e) for e in expected} == expected
    model = nn.Sequential(_known_spectrum_linear([4.0, 3.0, 2.0, 1.0, 0.5]))
    small, summary = factorize(model, energy=0.9)
    (row,) = summary["layers"]
    assert (row["rank"], row["full_rank"], row["rank_policy"]) == (3, 20, "energy")
    assert abs(row["energy_kept"] - 29 / 30.25) < 1e-6
    assert row["params_after"] == 3 * (20 + 30) + 30
    # Eckart-Young: the squared error of the rank-3 weight is exactly the dropped energy 1 + 0.25
    eye = torch.eye(20)
    with torch.no_grad():
        err = (small(eye) - model(eye)).pow(2).sum().item()
    assert abs(err - 1.25) < 1e-4


def test_param_budget_and_skips_are_reported():
    assert rank_for_budget(lambda r: r * 96 + 32, budget_params=0.25 * 2080, max_rank=32) == 5
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 4), nn.Conv2d(4, 4, 3, groups=2))
    small, summary = factorize(model, param_budget=0.25)
    (row,) = summary["layers"]
    assert (row["name"], row["rank"], row["params_after"], row["rank_policy"]) == ("0", 5, 512, "budget")
    reasons = {r["name"]: r["reason"] for r in summary["skipped"]}
    assert reasons["2"].startswith("grouped convolution") and "below rank 1" in reasons["1"]
    _, summary = factorize(nn.Sequential(nn.Linear(4, 4)), energy=1.0)
    assert summary["skipped"] == [
        {"name": "0", "reason": "rank 4 needs 36 params, not fewer than 20", "rank": 4}
    ]
    with pytest.raises(ConfigError, match="conv_mode='depth'"):
        factorize(model, conv_mode="depth")


def test_model_level_counts_macs_input_untouched_and_pickles():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    ).eval()
    reference = copy.deepcopy(model.state_dict())
    x = torch.randn(1, 3, 8, 8)
    small, summary = factorize(model, rank=4, conv_mode="spatial", example_inputs=x)
    rows = {r["name"]: r for r in summary["layers"]}
    assert rows["0"]["params_after"] == 4 * 3 * 3 + 16 * 4 * 3 + 16  # 244 < 448
    assert rows["2"]["params_after"] == 4 * 16 * 3 + 32 * 4 * 3 + 32  # 608 < 4640
    assert rows["5"]["params_after"] == 4 * (2048 + 10) + 10
    assert summary["params_after"] == sum(p.numel() for p in small.parameters()) == 244 + 608 + 8242
    # the first conv: (16 x 8 x 8 outputs) 3x1 from 3 channels to 4, then 1x3 from 4 to 16
    assert (rows["0"]["macs_before"], rows["0"]["macs_after"]) == (16 * 64 * 27, 4 * 64 * 9 + 16 * 64 * 12)
    assert small(x).shape == (1, 10)
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    buf = io.BytesIO()
    torch.save(small, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), small(x))


def test_svd_step_registered(tmp_path):
    spec = METHODS.get("low_rank/svd")
    cfg = spec.config.from_dict({"rank": 4, "include": ["re:.*"]})
    ctx = MethodData(example_inputs=torch.randn(1, 16), out_dir=tmp_path, num_classes=4)
    result = spec.fn(nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4)), cfg, ctx)
    # rank 4 of the 16x16 layer: 4 * 32 + 16 = 144 < 272; of the 4x16 layer: 4 * 20 + 4 = 84 >= 68, kept
    assert [r["name"] for r in result.summary["layers"]] == ["0"]
    assert [r["name"] for r in result.summary["skipped"]] == ["1"]
    assert result.summary["params_after"] == 144 + 68
    with pytest.raises(ConfigError, match="energy"):
        spec.config.from_dict({"energy": 1.5})
