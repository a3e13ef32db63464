"""prune/transformer ``reconstruct``: least-squares refit of the pruned blocks' output projections."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.pruning.reconstruction import reconstruct_weights_
from netcompress.pruning.transformer_pruning import TransformerPruneConfig, transformer_prune


def _vit():
    torch.manual_seed(0)
    return nc.models.create("vit_tiny", dim=32, depth=2, heads=4, mlp_dim=48, patch_size=8).eval()


def _loader(n=96, seed=1):
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=32)


def _error(small, model, loader):
    """Relative output (logit) error of ``small`` against ``model`` over ``loader``."""
    with torch.no_grad():
        pairs = [(small(x), model(x)) for x, _ in loader]
    return (
        float(sum((a - b).square().sum() for a, b in pairs) / sum(b.square().sum() for _, b in pairs)) ** 0.5
    )


def test_reconstruct_refits_only_the_output_projections_and_cuts_the_error():
    model, x, loader = _vit(), torch.randn(1, 3, 32, 32), _loader()
    config = TransformerPruneConfig(heads=0.5, ffn=0.5, importance="magnitude")
    plain, _ = transformer_prune(model, x, config)
    config = TransformerPruneConfig(
        heads=0.5, ffn=0.5, importance="magnitude", reconstruct=True, calib_batches=3
    )
    small, s = transformer_prune(model, x, config, loader=loader)
    names = [r["name"] for r in s["reconstruction"]["layers"]]
    assert names == [
        "encoder.layers.0.self_attn.out_proj", "encoder.layers.0.linear2",
        "encoder.layers.1.self_attn.out_proj", "encoder.layers.1.linear2",
    ]  # fmt: skip
    assert s["reconstruction"]["batches"] == 3
    for row in s["reconstruction"]["layers"]:
        assert row["error_after"] < row["error_before"]
    # everything else is the plain (verified) prune, untouched
    refitted = {f"{n}.{p}" for n in names for p in ("weight", "bias")}
    for (name, a), b in zip(small.state_dict().items(), plain.state_dict().values()):
        assert a.shape == b.shape
        if name not in refitted:
            assert torch.equal(a, b), name
    assert not torch.equal(small.encoder.layers[0].linear2.weight, plain.encoder.layers[0].linear2.weight)
    assert s["macs_after"] == nc.pruning.transformer_pruning.count_macs(small, x)
    # on the calibration batches, the logits move much less from the original's
    assert _error(small, model, loader) < 0.8 * _error(plain, model, loader)
    assert model.encoder.layers[0].self_attn.num_heads == 4  # the original is left as it was


def test_reconstruct_with_the_residual_width_pruned_targets_the_kept_channels():
    model, x, loader = _vit(), torch.randn(1, 3, 32, 32), _loader()
    config = TransformerPruneConfig(heads=0.25, ffn=0.25, hidden=0.25, reconstruct=True, calib_batches=2)
    small, s = transformer_prune(model, x, config, loader=loader)
    assert s["hidden_after"] == 24 and small.encoder.layers[0].linear2.out_features == 24
    assert len(s["reconstruction"]["layers"]) == 4
    assert all(r["error_after"] < r["error_before"] for r in s["reconstruction"]["layers"])


def test_reconstruct_needs_a_loader_and_known_layers():
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    with pytest.raises(ConfigError, match="reconstruct=True needs calibration batches"):
        transformer_prune(model, x, TransformerPruneConfig(heads=0.5, reconstruct=True))
    small = transformer_prune(model, x, TransformerPruneConfig(ffn=0.5))[0]
    with pytest.raises(ConfigError, match=r"layers \['nope'\] are not called"):
        reconstruct_weights_(small, model, _loader(), kept_indices={}, only=["nope"])


def test_reconstruct_on_a_hugging_face_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99
    )
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 99, (48, 12))
    loader = DataLoader(TensorDataset(ids), batch_size=16)
    config = TransformerPruneConfig(heads=0.5, ffn=0.5, reconstruct=True, calib_batches=3)
    small, s = transformer_prune(model, ids[:2], config, loader=loader)
    names = [r["name"] for r in s["reconstruction"]["layers"]]
    assert names == [
        "encoder.layer.0.attention.output.dense", "encoder.layer.0.output.dense",
        "encoder.layer.1.attention.output.dense", "encoder.layer.1.output.dense",
    ]  # fmt: skip
    assert all(r["error_after"] < r["error_before"] for r in s["reconstruction"]["layers"])


def test_reconstruct_when_attention_stays_whole_refits_the_ffn_through_an_observable_copy():
    model, x, loader = _vit(), torch.randn(1, 3, 32, 32), _loader()
    # heads=0.1 keeps all 4 heads: the blocks stay nn.MultiheadAttention (fused path in eval, no module calls)
    config = TransformerPruneConfig(heads=0.1, ffn=0.5, reconstruct=True, calib_batches=2)
    small, s = transformer_prune(model, x, config, loader=loader)
    assert type(small.encoder.layers[0].self_attn) is torch.nn.MultiheadAttention
    names = [r["name"] for r in s["reconstruction"]["layers"]]
    assert names == ["encoder.layers.0.linear2", "encoder.layers.1.linear2"]
    plain = transformer_prune(model, x, TransformerPruneConfig(heads=0.1, ffn=0.5))[0]
    assert not torch.equal(small.encoder.layers[1].linear2.weight, plain.encoder.layers[1].linear2.weight)
    assert _error(small, model, loader) < _error(plain, model, loader)
