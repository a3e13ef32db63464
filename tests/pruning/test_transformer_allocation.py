"""prune/transformer ``allocation="global"``: heads and neurons ranked over all blocks under a MAC target."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.pruning.transformer_allocation import unit_costs
from netcompress.pruning.transformer_blocks import find_blocks
from netcompress.pruning.transformer_importance import unit_importance
from netcompress.pruning.transformer_pruning import TransformerPruneConfig, count_macs, transformer_prune


def _vit():
    torch.manual_seed(0)
    return nc.models.create("vit_tiny", dim=32, depth=3, heads=4, mlp_dim=48, patch_size=8).eval()


def _loader():
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
    return DataLoader(data, batch_size=32)


def _kept_and_removed(scores, kept_lists):
    kept, removed = [], []
    for name, kept_idx in kept_lists.items():
        for i, s in enumerate(scores[name].tolist()):
            (kept if i in kept_idx else removed).append(s)
    return kept, removed


def test_global_allocation_reaches_the_target_and_keeps_the_globally_best_units():
    model, x, loader = _vit(), torch.randn(1, 3, 32, 32), _loader()
    cfg = TransformerPruneConfig(importance="taylor", mac_target=2.0, allocation="global", min_heads=1)
    small, s = transformer_prune(model, x, cfg, loader=loader)
    assert 2.0 <= s["mac_reduction"] < 2.1 and s["macs_after"] == count_macs(small, x)
    scores = unit_importance(model, find_blocks(model), "taylor", loader=loader, batches=cfg.calib_batches)
    heads = {u["name"]: u["kept"] for u in s["heads"]}
    neurons = {u["name"]: u["kept"] for u in s["ffn"]}
    # one ranking over all blocks: every removed unit scores at most the weakest kept one (beyond the floors)
    kept, removed = _kept_and_removed(scores.neurons, neurons)
    floor = {n: max(scores.neurons[n].tolist()) for n in neurons}  # the one neuron every block keeps
    optional = [k for k in kept if k not in floor.values()]
    assert removed and optional and max(removed) <= min(optional)
    kept_h, removed_h = _kept_and_removed(scores.heads, heads)
    floor_h = {max(scores.heads[n].tolist()) for n in heads}
    optional_h = [k for k in kept_h if k not in floor_h]
    assert not removed_h or not optional_h or max(removed_h) <= min(optional_h)
    # the counts differ between blocks (the uniform allocation keeps the same number in each)
    assert len({len(k) for k in neurons.values()}) > 1 or len({len(k) for k in heads.values()}) > 1


def test_unit_costs_are_measured_per_block():
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    blocks = find_blocks(model)
    base, heads, neurons = unit_costs(model, blocks, 32, lambda m: count_macs(m, x))
    tokens, head_dim = 17, 8
    assert base == count_macs(model, x)
    # one head: its q/k/v rows and output columns, plus its share of QK^T and attention @ V
    assert set(heads.values()) == {tokens * 32 * head_dim * 4 + 2 * tokens * tokens * head_dim}
    assert set(neurons.values()) == {2 * tokens * 32}


def test_global_allocation_with_heads_zero_keeps_every_head():
    model, x, loader = _vit(), torch.randn(1, 3, 32, 32), _loader()
    cfg = TransformerPruneConfig(heads=0.0, importance="taylor", mac_target=1.3, allocation="global")
    _, s = transformer_prune(model, x, cfg, loader=loader)
    assert [u["after"] for u in s["heads"]] == [4, 4, 4] and s["mac_reduction"] >= 1.3


def test_global_allocation_configuration_errors():
    with pytest.raises(ConfigError, match="allocation='global' spends a mac_target"):
        TransformerPruneConfig(allocation="global")
    with pytest.raises(ConfigError, match="allocation='global' spends a mac_target"):
        TransformerPruneConfig(allocation="global", mac_target=2.0, hidden=0.25)
    with pytest.raises(ConfigError, match="allocation"):
        TransformerPruneConfig(allocation="layerwise")
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    with pytest.raises(ConfigError, match="out of reach with allocation='global'"):
        transformer_prune(model, x, TransformerPruneConfig(mac_target=20.0, allocation="global"))
