"""benchmarks/early_exit_heads.py and early_exit.py's --head: one head kind or one per exit, bad lists refused by
name, and the head-cost table times each kind at each exit's real map."""

from __future__ import annotations

import argparse

import cifar_protocol as cp
import early_exit as eeb
import early_exit_heads as heads
import pytest
import torch

from netcompress import models
from netcompress.dynamic import add_early_exits

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_config_is_one_kind_or_one_per_exit_and_unknown_kinds_are_refused():
    assert heads.parse_config("conv=pool_conv_grid_linear") == ("conv", "pool_conv_grid_linear")
    assert heads.parse_config("mix=pool_linear,pool_grid_conv_linear") == (
        "mix", ["pool_linear", "pool_grid_conv_linear"]
    )  # fmt: skip
    with pytest.raises(argparse.ArgumentTypeError, match="no_such"):
        heads.parse_config("x=pool_linear,no_such")
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=KIND"):
        heads.parse_config("pool_linear")


def test_head_flag_keeps_one_kind_a_string_and_checks_one_per_exit():
    # one kind: a string, so the cache key of every earlier run is unchanged
    assert eeb.parse(["--head", "pool_conv_grid_linear"]).head == "pool_conv_grid_linear"
    per_exit = eeb.parse(["--exits", "layer1.1", "layer2.0", "--head", "pool_linear", "pool_grid_conv_linear"])
    assert per_exit.head == ["pool_linear", "pool_grid_conv_linear"]
    with pytest.raises(SystemExit):
        eeb.parse(["--exits", "layer1.1", "layer2.0", "layer3.0", "--head", "pool_linear", "pool_grid_linear"])


def test_head_costs_time_every_kind_at_every_exit_on_the_exit_maps():
    torch.manual_seed(0)
    resnet = models.create("cifar_resnet20", num_classes=10).eval()
    ee = add_early_exits(resnet, exits=["layer1.1", "layer3.0"], example_inputs=X[:1]).eval()
    out = heads.head_costs(ee, resnet, X, ["pool_linear", "pool_grid_conv_linear"], rounds=1)
    assert sorted(out["heads"]) == sorted(
        f"{e} {k}" for e in ("layer1.1", "layer3.0") for k in ("pool_linear", "pool_grid_conv_linear")
    )
    assert all(v["ms"] > 0 and v["share"] > 0 for v in out["heads"].values())
    # each head runs on its exit's map: 16 x 32 x 32 after layer1.1, 64 x 8 x 8 after layer3.0
    state = ee.run_segment(0, (X,))[0]
    torch.manual_seed(0)
    probe = heads.HeadOnState(heads.HEADS.get("pool_linear")(in_channels=16, num_classes=10).eval(), state)
    assert probe(torch.empty(0)).shape == (4, 10)


def test_head_seed_enters_the_cache_key_only_when_given():
    protocol = eeb.protocol_of(eeb.parse(["--quick"]))
    plain = eeb.train_settings(eeb.parse(["--quick"]), protocol)
    seeded = eeb.train_settings(eeb.parse(["--quick", "--head-seed", "1"]), protocol)
    assert "head_seed" not in plain  # earlier caches keep their keys
    assert seeded == {**plain, "head_seed": 1} and cp.cache_key(seeded) != cp.cache_key(plain)
