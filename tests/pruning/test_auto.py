"""prune_to_target: automatic per-layer rates reach a MAC / parameter reduction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress import models as nc_models
from netcompress.core.errors import ConfigError
from netcompress.pruning.auto import prune_to_target
from netcompress.pruning.channel import count_params, count_total_macs

X = torch.randn(2, 3, 8, 8)


def net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


@pytest.mark.parametrize(("target", "reduction"), [("macs", 3.5), ("macs", 2.0), ("params", 2.5)])
def test_global_reaches_the_target_within_tolerance(target: str, reduction: float) -> None:
    model = net()
    small, summary = prune_to_target(
        model, X, target=target, reduction=reduction, method="global", round_to=1
    )
    measure = count_total_macs if target == "macs" else (lambda m, _x: count_params(m))
    achieved = measure(model, X) / measure(small, X)
    assert achieved == pytest.approx(summary["achieved_reduction"])
    assert reduction <= achieved <= reduction * 1.1  # reached, and not overshot by more than 10%
    assert small(X).shape == (2, 10)
    assert {tuple(r["layers"]) for r in summary["rates"]} == {("0",), ("3",), ("7",)}
    assert all(0.0 <= r["rate"] < 1.0 for r in summary["rates"])


def _loader():
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(2)
    ]


def test_sensitivity_reaches_the_target_and_reports_drops() -> None:
    model = net()
    small, summary = prune_to_target(
        model,
        X,
        target="macs",
        reduction=2.0,
        method="sensitivity",
        loader=_loader(),
        rate_grid=(0.25, 0.5, 0.75),
        round_to=1,
    )
    assert 2.0 <= summary["achieved_reduction"] <= 3.0  # one grid step of one layer past the target at most
    assert len(summary["sensitivity"]) == 3 and all(
        len(s["accuracy_drop"]) == 3 for s in summary["sensitivity"]
    )
    assert 0.0 <= summary["baseline_accuracy"] <= 1.0
    assert small(X).shape == (2, 10)


def test_unreachable_target_and_bad_input_are_errors() -> None:
    with pytest.raises(ConfigError, match="cannot reach a 1000.0x macs reduction"):
        prune_to_target(net(), X, reduction=1000.0)
    with pytest.raises(ConfigError, match="loader"):
        prune_to_target(net(), X, method="sensitivity")
    with pytest.raises(ConfigError, match="target"):
        prune_to_target(net(), X, target="speed")


@pytest.mark.parametrize(("target", "reduction"), [("macs", 3.5), ("params", 2.0)])
def test_uniform_prunes_every_group_by_the_same_share_and_reaches_the_target(
    target: str, reduction: float
) -> None:
    model = net()
    small, summary = prune_to_target(
        model, X, target=target, reduction=reduction, method="uniform", round_to=1
    )
    assert summary["strategy"] == "uniform"
    ratio = summary["search_value"]
    # every group keeps channels - floor(ratio * channels), or the channels the last ratio step took given
    # back by the top-up: the same share up to the step's channels
    for row in summary["rates"]:
        at_ratio = row["channels"] - int(ratio * row["channels"] + 1e-9)
        at_previous = row["channels"] - int((ratio - 1e-3) * row["channels"] + 1e-9)
        assert at_ratio <= row["kept"] <= at_previous
    assert reduction <= summary["achieved_reduction"] <= reduction * 1.25
    measure = count_total_macs if target == "macs" else (lambda m, _x: count_params(m))
    assert measure(model, X) / measure(small, X) == pytest.approx(summary["achieved_reduction"])


def test_uniform_ratio_on_the_test_net_then_top_up() -> None:
    # net(): 16/32/32 channels; at 3.5x fewer MACs the search lands on ratio 0.5 -> 8/16/16 (3.775x);
    # the step from ratio 0.499 took one channel from each of the three groups (9/17/17 = 3.26x does not
    # fit), and giving back the two 32-channel groups' channel still fits: 8/17/17
    model = net()
    small, summary = prune_to_target(model, X, target="macs", reduction=3.5, method="uniform", round_to=1)
    assert summary["search_value"] == 0.5
    assert [r["kept"] for r in summary["rates"]] == [8, 17, 17]
    assert 3.5 <= summary["achieved_reduction"] < 3.775
    assert count_total_macs(model, X) / count_total_macs(small, X) == pytest.approx(
        summary["achieved_reduction"]
    )


@pytest.mark.parametrize("method", ["uniform", "global"])
def test_auto_rounding_keeps_multiples_of_8_in_groups_of_16_or_more(method: str) -> None:
    # net() with a first layer of 12 channels: below 16, so "auto" leaves it free
    torch.manual_seed(0)
    model = net()
    model[0], model[1], model[3] = (
        nn.Conv2d(3, 12, 3, padding=1),
        nn.BatchNorm2d(12),
        nn.Conv2d(12, 32, 3, padding=1),
    )
    model.eval()
    small, summary = prune_to_target(model, X, target="macs", reduction=2.5, method=method, round_to="auto")
    kept = {tuple(r["layers"]): (r["channels"], r["kept"]) for r in summary["rates"]}
    assert kept[("3",)][1] % 8 == 0 and kept[("7",)][1] % 8 == 0
    assert summary["achieved_reduction"] >= 2.5
    free, _ = prune_to_target(model, X, target="macs", reduction=2.5, method=method, round_to=1)
    assert small(X).shape == free(X).shape == (2, 10)
    # a plain 8 could only keep 8 or 12 of the 12; "auto" kept 6 there (global: 5, then the fill-up gave
    # one back within the budget)
    assert kept[("0",)][1] == 6


def test_round_to_must_be_a_positive_int_or_auto() -> None:
    for bad in (0, "fast", 2.5, True):
        with pytest.raises(ConfigError, match="round_to"):
            prune_to_target(net(), X, round_to=bad)


def test_uniform_top_up_brings_a_resnet_close_to_the_budget() -> None:
    # one ratio step drops a channel from every 16-channel group of a ResNet-20 at once (3.96x for 3.5x)
    model = nc_models.create("cifar_resnet20", num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    _, summary = prune_to_target(model, x, target="macs", reduction=3.5)
    assert summary["strategy"] == "uniform" and summary["importance"] == "group_l2"  # the defaults
    assert 3.5 <= summary["achieved_reduction"] < 3.6


def test_global_cost_ranks_by_importance_per_mac() -> None:
    model = net()
    small, summary = prune_to_target(model, X, target="macs", reduction=3.5, method="global_cost", round_to=1)
    costs = {tuple(r["layers"]): r["cost"] for r in summary["unit_costs"]}
    # per image (X holds 2), one channel of conv "0" (8x8 maps): 3*9*64 MACs of its filter + 32*9*64 of
    # conv "3"'s input = 20,160; of conv "7" (4x4 maps): 32*9*16 + 10 of the Linear = 4,618
    assert costs[("0",)] == 2 * (3 * 9 * 64 + 32 * 9 * 64)
    assert costs[("7",)] == 2 * (32 * 9 * 16 + 10)
    assert 3.5 <= summary["achieved_reduction"] <= 3.5 * 1.1
    kept = {tuple(r["layers"]): r["kept"] for r in summary["rates"]}
    # the expensive early channels go first: conv "0" loses a larger share than the cheap conv "7"
    assert kept[("0",)] / 16 < kept[("7",)] / 32


def _wide_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    ).eval()  # fmt: skip


def test_fill_up_gives_whole_blocks_back_until_none_fits() -> None:
    # 32/64/128 channels, multiples of 8: the shared ratio alone lands on 16/32/72 = 3.688x for 3.0x;
    # the fill-up gives four 8-channel blocks of the cheap last layer back: 16/32/104 = 3.009x
    model, x = _wide_net(), torch.randn(1, 3, 8, 8)
    small, summary = prune_to_target(model, x, target="macs", reduction=3.0, round_to="auto")
    assert [r["kept"] for r in summary["rates"]] == [16, 32, 104]
    assert summary["filled_units"] == 32
    assert 3.0 <= summary["achieved_reduction"] < 3.02
    budget = count_total_macs(model, x) / 3.0
    assert count_total_macs(small, x) <= budget
    # the cheapest block left, 8 more channels of conv "7" (4x4 maps, 32 inputs) and the Linear's 8 inputs,
    # no longer fits: the fill-up stopped as close to the budget as whole blocks allow
    assert budget - count_total_macs(small, x) < 8 * 32 * 9 * 16 + 8 * 10
