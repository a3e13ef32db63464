"""prune/transformer's MAC target, and MAC counts that include attention's own products."""

from __future__ import annotations

import pytest
import torch

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.pruning.transformer_pruning import TransformerPruneConfig, count_macs, transformer_prune


def _vit(**kw):
    torch.manual_seed(0)
    return nc.models.create("vit_tiny", **{"dim": 32, "depth": 2, "heads": 4, "mlp_dim": 48, **kw})


def _hand_macs(tokens, dim, depth, mlp, patch_pixels, classes=10, heads_kept=None, mlp_kept=None):
    per_layer = 0
    for i in range(depth):
        inner = dim * (heads_kept[i] if heads_kept else 4) // 4
        width = mlp_kept[i] if mlp_kept else mlp
        per_layer += tokens * dim * 3 * inner + tokens * inner * dim  # q/k/v and output projections
        per_layer += 2 * tokens * tokens * inner  # QK^T and attention @ V
        per_layer += 2 * tokens * dim * width  # FFN up and down
    return (tokens - 1) * patch_pixels * dim + per_layer + dim * classes


def test_count_macs_includes_the_attention_products():
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    assert count_macs(model, x) == _hand_macs(65, 32, 2, 48, 3 * 4 * 4)


def test_mac_target_reaches_the_target_with_the_smallest_equal_shares():
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    small, s = transformer_prune(model, x, TransformerPruneConfig(heads=0.5, ffn=0.5, mac_target=2.0))
    heads, ffn = [u["after"] for u in s["heads"]], [u["after"] for u in s["ffn"]]
    assert (
        s["macs_after"]
        == count_macs(small, x)
        == _hand_macs(65, 32, 2, 48, 48, heads_kept=heads, mlp_kept=ffn)
    )
    assert 2.0 <= s["mac_reduction"] < 2.03
    assert s["heads"] and s["mac_target"] == 2.0
    # one more FFN neuron per layer and the target is missed: the shares are the smallest that reach it
    more = _hand_macs(65, 32, 2, 48, 48, heads_kept=heads, mlp_kept=[f + 1 for f in ffn])
    assert s["macs_before"] / more < 2.0
    assert heads == [2, 2] and ffn[0] == ffn[1]


def test_mac_target_keeps_the_configured_split():
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    _, s = transformer_prune(model, x, TransformerPruneConfig(heads=0.0, ffn=0.5, mac_target=1.3))
    assert [u["after"] for u in s["heads"]] == [4, 4]  # heads=0: only FFN neurons go
    assert 1.3 <= s["mac_reduction"] < 1.33 and s["ffn"][0]["after"] < 48


def test_unreachable_or_meaningless_mac_targets_are_errors():
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    with pytest.raises(ConfigError, match="mac_target=10.0 is out of reach"):
        transformer_prune(model, x, TransformerPruneConfig(heads=0.0, ffn=0.5, mac_target=10.0))
    with pytest.raises(ConfigError, match="mac_target=0.5 must be above 1"):
        TransformerPruneConfig(mac_target=0.5)
    with pytest.raises(ConfigError, match="mac_target needs heads, ffn or hidden"):
        transformer_prune(model, x, TransformerPruneConfig(heads=0.0, ffn=0.0, mac_target=2.0))
