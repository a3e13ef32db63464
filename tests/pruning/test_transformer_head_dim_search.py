"""prune_head_dims / prune/transformer with head dims: MAC target, verification, ONNX, nc.save/nc.load, config."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData
from netcompress.pruning import HeadDimAttention, TransformerPruneConfig, prune_head_dims
from netcompress.pruning.transformer_head_dim import masked_reference
from netcompress.pruning.transformer_pruning import count_macs


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return nc.models.create("vit_tiny", dim=32, depth=2, heads=4, mlp_dim=64, patch_size=8).eval()


def _loader() -> torch.utils.data.DataLoader:
    torch.manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
    return torch.utils.data.DataLoader(data, batch_size=8)


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def test_shares_as_given_equal_the_masked_original_with_exact_counts():
    model = _vit()
    result = nc.apply(
        model,
        TransformerPruneConfig(heads=0.0, ffn=0.0, head_dim_qk=0.5, head_dim_v=0.25),
        MethodData(example_inputs=X, calib_loader=_loader()),
    )
    small, summary = result.model, result.summary
    attn = small.encoder.layers[0].self_attn
    assert isinstance(attn, HeadDimAttention) and (attn.num_heads, attn.qk_dim, attn.v_dim) == (4, 4, 6)
    kept = {u["name"]: (u["qk_kept"], u["v_kept"]) for u in summary["head_dims"]}
    assert len(kept) == 2 and all(len(q) == 4 for q in kept["encoder.layers.1.self_attn"][0])
    masked = masked_reference(copy.deepcopy(model), kept)
    with torch.no_grad():
        assert torch.allclose(small(X), masked(X), atol=1e-5)
        assert not torch.allclose(small(X), model(X), atol=1e-3)
    # per layer: in_proj keeps q,k 4x4 rows + v 4x6 rows of 96 (each 32 weights + bias); out_proj 8 columns go
    removed = 2 * ((96 - (16 + 16 + 24)) * 33 + (32 - 24) * 32)
    assert summary["params_before"] - summary["params_after"] == removed
    assert sum(p.numel() for p in small.parameters()) == summary["params_after"]
    assert summary["macs_after"] == count_macs(small, X) < count_macs(model, X)


def test_mac_target_with_ffn_is_met_and_exported_and_saved(tmp_path):
    model = _vit()
    small = prune_head_dims(model, X, qk=0.5, v=0.25, ffn=0.5, mac_target=2.0, calib=_loader())
    reduction = count_macs(model, X) / count_macs(small, X)
    assert 2.0 <= reduction < 2.05
    assert small.encoder.layers[0].self_attn.qk_dim < 8 and small.encoder.layers[0].linear1.out_features < 64
    with torch.no_grad():
        want = small(X).numpy()
    # ONNX Runtime runs the pruned model and matches PyTorch
    import onnxruntime as ort

    nc.export_onnx(small, tmp_path / "m.onnx", X)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: X.numpy()})[0]
    assert np.allclose(got, want, atol=1e-4)
    # nc.save / nc.load round-trip (no pickle): same class, same dims, same outputs
    nc.save(small, tmp_path / "m.nc", example_inputs=X)
    back = nc.load(tmp_path / "m.nc").eval()
    attn = back.encoder.layers[1].self_attn
    assert isinstance(attn, HeadDimAttention) and attn.qk_dim == small.encoder.layers[1].self_attn.qk_dim
    with torch.no_grad():
        assert torch.allclose(back(X), small(X), atol=1e-6)


def test_magnitude_scores_need_no_data_and_out_of_reach_is_an_error():
    model = _vit()
    small = prune_head_dims(model, X, qk=0.5, v=0.5)  # no calib: magnitude scores
    assert small.encoder.layers[0].self_attn.v_dim == 4
    with pytest.raises(ConfigError, match="mac_target=20.0 is out of reach"):
        prune_head_dims(model, X, qk=0.25, v=0.25, mac_target=20.0)
    with pytest.raises(ConfigError, match="needs calibration batches"):
        prune_head_dims(model, X, qk=0.5, v=0.5, head_dim_importance="activation")
    one = prune_head_dims(model, X, qk=0.5, v=0.5, ignore=["encoder.layers.0.self_attn"])
    assert type(one.encoder.layers[0].self_attn) is torch.nn.MultiheadAttention
    assert isinstance(one.encoder.layers[1].self_attn, HeadDimAttention)
    with pytest.raises(ConfigError, match="ignore pattern 'encoder.layers.9' matches no module"):
        prune_head_dims(model, X, qk=0.5, v=0.5, ignore=["encoder.layers.9"])


@pytest.mark.parametrize(
    "values,message",
    [
        ({"head_dim_qk": 0.5}, "set heads=0"),  # the default heads=0.25 clashes
        ({"heads": 0.0, "head_dim_v": 0.5, "hidden": 0.1}, "hidden=0.1"),
        ({"heads": 0.0, "head_dim_qk": 1.0}, "head_dim_qk"),
        ({"heads": 0.0, "head_dim_qk": -0.1}, "head_dim_qk"),
        ({"heads": 0.0, "head_dim_qk": 0.5, "head_dim_importance": "taylor"}, "head_dim_importance"),
        ({"heads": 0.0, "head_dims": 0.5}, "unknown key 'head_dims'"),
    ],
)
def test_recipe_values_are_checked(values, message):
    with pytest.raises(ConfigError, match=message):
        TransformerPruneConfig.from_dict(values, where="steps[0]")


def test_recipe_step_accepts_head_dims_and_names_bad_ones():
    from netcompress.recipes import resolve_recipe

    def recipe(**step):
        prune = {"op": "prune", "method": "transformer", "heads": 0.0, **step}
        return {"model": {"name": "vit_tiny"}, "data": {"name": "cifar10"}, "steps": [prune]}

    ok = resolve_recipe(recipe(head_dim_qk=0.25, head_dim_v=0.25, ffn=0.75, mac_target=2.0))["steps"][0]
    assert (ok["head_dim_qk"], ok["head_dim_v"], ok["head_dim_importance"]) == (0.25, 0.25, "activation")
    for bad, named in [({"head_dim_qk": "half"}, "head_dim_qk"), ({"head_dim_v": 1.5}, "head_dim_v"),
                       ({"head_dim_qk": 0.5, "hidden": 0.2}, "hidden=0.2")]:  # fmt: skip
        with pytest.raises(ConfigError, match=named):
            resolve_recipe(recipe(**bad))


def test_a_result_that_differs_from_the_masked_original_is_refused(monkeypatch):
    import netcompress.pruning.transformer_head_dim_search as search

    real = search.masked_reference

    def off_by_one_channel(model, kept):  # the reference drops one more q/k channel than the pruned model
        name = next(iter(kept))
        qk, v = kept[name]
        return real(model, {**kept, name: ([qk[0][1:], *qk[1:]], v)})

    monkeypatch.setattr(search, "masked_reference", off_by_one_channel)
    with pytest.raises(nc.core.errors.UnsupportedModelError, match="differs from the original"):
        prune_head_dims(_vit(), X, qk=0.5, v=0.5)
