"""vit_pruning --head-dim / vit_variants ``q..v..f..`` specs: head dims through the library, to the MAC target."""

from __future__ import annotations

import pytest
import torch

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.pruning import HeadDimAttention
from netcompress.pruning.transformer_pruning import count_macs

vp = pytest.importorskip("vit_pruning")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return nc.models.create("vit_tiny", dim=32, depth=2, heads=4, mlp_dim=64, patch_size=8).eval()


def test_vit_pruning_head_dim_flag_prunes_inside_heads_to_the_target():
    args = vp.parse_args(
        ["--quick", "--head-dim", "0.5,0.5", "--ffn-share", "0.5", "--importance", "magnitude"]
    )
    model = _model()
    train, _ = vp.synthetic_bundle(n_train=64, n_test=8)
    x = torch.randn(1, 3, 32, 32)
    small, summary = vp.prune_ours(args, model, train, x)
    assert 2.0 <= summary["mac_reduction"] < 2.05
    assert summary["mac_reduction"] == count_macs(model, x) / count_macs(small, x)
    assert [u["after"] for u in summary["heads"]] == [4, 4]  # every head stays, narrower
    assert all(d < 8 for d in summary["qk_dim"] + summary["v_dim"]) and len(summary["ffn"]) == 2
    assert isinstance(small.encoder.layers[1].self_attn, HeadDimAttention)
    args.head_dim, args.ffn_share = "0.25,0.25", 0.0  # head dims alone (<= 99 % each) on this tiny ViT
    with pytest.raises(ConfigError, match="mac_target=2.0 is out of reach"):
        vp.prune_ours(args, model, train, torch.randn(1, 3, 32, 32))


def test_vit_variants_head_dim_spec_uses_the_library():
    vv = pytest.importorskip("vit_variants")
    args = vp.parse_args(["--quick"])
    train, _ = vp.synthetic_bundle(n_train=64, n_test=8)
    small, info = vv.prune(args, "q.5v.25f.5-magnitude", _model(), train, torch.randn(1, 3, 32, 32))
    assert 2.0 <= info["mac_reduction"] < 2.05 and len(info["qk_dim"]) == len(info["ffn"]) == 2
    assert info["qk_dim"][0] < 8 and isinstance(small.encoder.layers[0].self_attn, HeadDimAttention)
