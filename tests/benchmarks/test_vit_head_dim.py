"""benchmarks/vit_head_dim.py: head-dim pruning inside attention heads equals the masked model."""

from __future__ import annotations

import copy

import pytest
import torch

import netcompress as nc
from netcompress.pruning.transformer_pruning import count_macs

hd = pytest.importorskip("vit_head_dim")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return nc.models.create("vit_tiny", dim=32, depth=2, heads=4, mlp_dim=64, patch_size=8).eval()


def _masked(model: torch.nn.Module, scores: dict, qk_share: float, v_share: float) -> torch.nn.Module:
    """``model`` with the channels head-dim pruning removes zeroed in ``in_proj`` (rows and bias)."""
    masked = copy.deepcopy(model)
    for name, (qk, v) in scores.items():
        attn = masked.get_submodule(name)
        d, inner = attn.head_dim, attn.num_heads * attn.head_dim
        keep_qk, keep_v = round((1 - qk_share) * d), round((1 - v_share) * d)
        with torch.no_grad():
            for h in range(attn.num_heads):
                for i in set(range(d)) - set(qk[h].topk(keep_qk).indices.tolist()):
                    for row in (h * d + i, inner + h * d + i):
                        attn.in_proj_weight[row] = 0
                        attn.in_proj_bias[row] = 0
                for i in set(range(d)) - set(v[h].topk(keep_v).indices.tolist()):
                    attn.in_proj_weight[2 * inner + h * d + i] = 0
                    attn.in_proj_bias[2 * inner + h * d + i] = 0
    return masked


@pytest.mark.parametrize("qk_share,v_share", [(0.0, 0.0), (0.5, 0.25), (0.75, 0.5)])
def test_head_dim_pruning_equals_the_masked_model(qk_share, v_share):
    model = _model()
    x = torch.randn(6, 3, 32, 32)
    scores = hd.channel_scores(model, [(x[:3], None), (x[3:], None)])
    assert set(scores) == {"encoder.layers.0.self_attn", "encoder.layers.1.self_attn"}
    assert scores["encoder.layers.0.self_attn"][0].shape == (4, 8)
    small = hd.prune_head_dims(copy.deepcopy(model), scores, qk_share, v_share)
    attn = small.encoder.layers[0].self_attn
    assert isinstance(attn, hd.HeadDimAttention)
    assert (attn.qk_dim, attn.v_dim) == (round(8 * (1 - qk_share)), round(8 * (1 - v_share)))
    with torch.no_grad():
        expected = _masked(model, scores, qk_share, v_share)(x)
        got = small(x)
    assert torch.allclose(got, expected, atol=1e-5)
    if qk_share == v_share == 0:
        assert torch.allclose(got, model(x), atol=1e-5)
    else:
        assert count_macs(small, x[:1]) < count_macs(model, x[:1])
        assert not torch.allclose(got, model(x), atol=1e-3)  # channels really went


def test_prune_to_target_reaches_the_mac_target():
    model = _model()
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))

    def loader():
        return torch.utils.data.DataLoader(data, batch_size=16)

    x = torch.randn(1, 3, 32, 32)
    small, info = hd.prune_to_target(
        model,
        x,
        loader,
        qk=0.5,
        v=0.25,
        ffn=0.5,
        importance="magnitude",
        reconstruct=False,
        mac_target=2.0,
        seed=0,
    )
    assert 2.0 <= info["mac_reduction"] < 2.05 and info["mac_reduction"] == count_macs(model, x) / count_macs(
        small, x
    )
    assert len(info["qk_dim"]) == 2 and info["qk_dim"][0] < 8 and small(x).shape == (1, 10)


def test_vit_pruning_head_dim_flag_prunes_inside_heads_to_the_target():
    import vit_pruning as vp

    args = vp.parse_args(
        ["--quick", "--head-dim", "0.5,0.5", "--ffn-share", "0.5", "--importance", "magnitude"]
    )
    model = _model()
    train, _ = vp.synthetic_bundle(n_train=64, n_test=8)
    x = torch.randn(1, 3, 32, 32)
    small, summary = vp.prune_ours(args, model, train, x)
    assert 2.0 <= summary["mac_reduction"] < 2.05
    assert [u["after"] for u in summary["heads"]] == [4, 4]  # every head stays, narrower
    assert all(d < 8 for d in summary["qk_dim"] + summary["v_dim"]) and len(summary["ffn"]) == 2
    assert isinstance(small.encoder.layers[1].self_attn, vp.hd.HeadDimAttention)
    args.head_dim, args.ffn_share = (
        "0.25,0.25",
        0.75,
    )  # 33 % of each at most: 2x out of reach on this tiny ViT
    with pytest.raises(ValueError, match="cannot reach 2.0x fewer MACs"):
        vp.prune_ours(args, model, train, x)
