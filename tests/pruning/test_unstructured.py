"""Unstructured pruning and masks: exact zero counts, global threshold, masks that survive training/copies."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from netcompress.core import ConfigError
from netcompress.pruning.masks import (
    MaskForwardPreHook,
    MaskKeeper,
    apply_mask,
    load_masked_state_dict,
    masked_parameters,
    remove_masks,
    sparsity_report,
)
from netcompress.pruning.unstructured import SCORES, prune_unstructured, prune_unstructured_


class _Net(nn.Module):
    """Conv1d + Conv2d + Linear weights: 2*3*4=24, 3*4*3*3=108, 4*16=64 -> 196 prunable weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(2, 3, 4)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        y = self.conv1d(x[:, :2, 0, :]).unsqueeze(2)  # (n, 3, 1, 3)
        z = self.conv(x[:, :3])  # (n, 4, 4, 4)
        z = z + y.mean()
        return self.fc(z.mean(dim=3).reshape(n, 16))


def _zeros(t: torch.Tensor) -> int:
    return int(t.numel() - torch.count_nonzero(t))


def test_layer_scope_prunes_exact_count_per_layer():
    model = _Net()
    conv_abs = model.conv.weight.detach().abs().clone()
    s = prune_unstructured(model, amount=0.3, method="l1", scope="layer")
    # round(0.3 * 24) = 7, round(0.3 * 108) = 32, round(0.3 * 64) = 19
    assert [_zeros(model.conv1d.weight), _zeros(model.conv.weight), _zeros(model.fc.weight)] == [7, 32, 19]
    assert s["zero_params"] == 58 and s["selected_params"] == 196
    assert s["per_layer"] == {"conv1d": 7 / 24, "conv": 32 / 108, "fc": 19 / 64}
    params = sum(p.numel() for p in model.parameters())
    assert s["nonzero_params"] == params - 58
    # within a layer, every pruned |w| is <= every kept |w| (magnitude criterion)
    keep = model.conv.weight_mask
    assert conv_abs[~keep].max() <= conv_abs[keep].min()


def test_global_scope_uses_one_threshold_over_all_layers():
    model = _Net()
    with torch.no_grad():
        model.fc.weight.mul_(100.0)  # a layer of large weights keeps (almost) all of them
    before = {n: m.weight.detach().abs().clone() for n, m in [("conv1d", model.conv1d), ("conv", model.conv)]}
    before["fc"] = model.fc.weight.detach().abs().clone()
    s = prune_unstructured(model, amount=0.5, scope="global")
    assert s["zero_params"] == 98 and s["global_sparsity"] == 0.5
    pruned, kept = [], []
    for name, layer in [("conv1d", model.conv1d), ("conv", model.conv), ("fc", model.fc)]:
        pruned.append(before[name][~layer.weight_mask])
        kept.append(before[name][layer.weight_mask])
    assert torch.cat(pruned).max() <= torch.cat(kept).min()
    assert s["per_layer"]["fc"] == 0.0 and s["per_layer"]["conv"] > 0.5


def test_repruning_combines_masks_and_counts_existing_zeros():
    model = _Net()
    prune_unstructured(model, amount=0.5, scope="layer")
    first = model.conv.weight_mask.clone()
    s = prune_unstructured(model, amount=0.25, scope="layer")  # below current sparsity: nothing new
    assert s["per_layer"]["conv"] == 54 / 108 and torch.equal(model.conv.weight_mask, first)
    s = prune_unstructured(model, amount=0.75, scope="layer")
    assert _zeros(model.conv.weight) == 81 and s["per_layer"]["fc"] == 48 / 64
    assert not (model.conv.weight_mask & ~first).any()  # earlier pruned weights stay pruned


def test_include_exclude_patterns():
    model = _Net()
    s = prune_unstructured(model, amount=0.5, scope="layer", include=["re:conv.*"], exclude=["conv1d"])
    assert list(s["per_layer"]) == ["conv"] and _zeros(model.conv.weight) == 54
    assert _zeros(model.fc.weight) == 0 and not hasattr(model.fc, "weight_mask")


@pytest.mark.parametrize("method", SCORES.names())
def test_every_method_prunes_exact_count(method):
    model = _Net()
    s = prune_unstructured(model, amount=0.4, method=method, scope="global", seed=3)
    assert s["zero_params"] == round(0.4 * 196) == 78


def test_random_is_seeded():
    a, b, c = _Net(), _Net(), _Net()
    for m in (b, c):
        m.load_state_dict(a.state_dict())
    prune_unstructured(a, amount=0.5, method="random", seed=1)
    prune_unstructured(b, amount=0.5, method="random", seed=1)
    prune_unstructured(c, amount=0.5, method="random", seed=2)
    assert torch.equal(a.conv.weight_mask, b.conv.weight_mask)
    assert not torch.equal(a.conv.weight_mask, c.conv.weight_mask)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"amount": 1.5}, "amount"),
        ({"amount": "half"}, "amount"),
        ({"method": "l3"}, "method"),
        ({"scope": "local"}, "scope"),
        ({"include": ["nope"]}, "'nope'"),
        ({"exclude": "fc"}, "exclude"),
        ({"exclude": ["conv1d", "conv", "fc"]}, "no Conv1d/Conv2d/Conv3d/Linear weight selected"),
    ],
)
def test_bad_arguments_raise_config_error_naming_them(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        prune_unstructured(_Net(), **kwargs)


def test_apply_mask_checks_name_and_shape():
    layer = nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="no parameter 'weigth'"):
        apply_mask(layer, "weigth", torch.ones(2, 3))
    with pytest.raises(ConfigError, match=r"shape \(3, 2\)"):
        apply_mask(layer, "weight", torch.ones(3, 2))


def _train_steps(model: nn.Module, *, steps: int, hooks=()) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 3, 6, 6)).pow(2).sum().backward()
        opt.step()
        for h in hooks:
            h.after_step(model)


def test_masks_hold_through_sgd_with_momentum_and_weight_decay():
    model = _Net()
    _train_steps(model, steps=2)  # momentum buffers exist before pruning
    prune_unstructured(model, amount=0.6, scope="global")
    masks = {n: m.weight_mask.clone() for n, m in model.named_children()}
    _train_steps(model, steps=3)
    # without a keeper the optimiser moves pruned weights between steps ...
    assert any(_zeros(m.weight) < (~masks[n]).sum() for n, m in model.named_children())
    # ... the state dict and every forward see them at zero
    sd = model.state_dict()
    assert all(_zeros(sd[f"{n}.weight"]) >= int((~masks[n]).sum()) for n in masks)
    model(torch.randn(1, 3, 6, 6))
    assert all(not model.get_submodule(n).weight[~masks[n]].any() for n in masks)
    keeper = MaskKeeper()
    _train_steps(model, steps=3, hooks=[keeper])
    assert all(not model.get_submodule(n).weight[~masks[n]].any() for n in masks)
    assert all(model.get_submodule(n).weight[masks[n]].count_nonzero() == masks[n].sum() for n in masks)
    assert keeper.epoch_end(model, 0)["sparsity"] == 118 / 196


def test_masks_survive_deepcopy_pickle_and_state_dict():
    model = _Net()
    prune_unstructured(model, amount=0.7, scope="layer")
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(model), torch.load(buffer, weights_only=False)]
    for clone in copies:
        with torch.no_grad():
            for layer in (clone.conv1d, clone.conv, clone.fc):
                layer.weight.add_(1.0)  # dense update everywhere: the hook must re-zero the pruned part
                layer.weight.sub_(1.0)
            clone.fc.weight.fill_(1.0)
        clone(x)
        assert _zeros(clone.fc.weight) == round(0.7 * 64)
        assert torch.equal(clone.conv.weight_mask, model.conv.weight_mask)
    fresh = _Net()
    load_masked_state_dict(fresh, model.state_dict())
    assert torch.equal(fresh(x), expected) and len(masked_parameters(fresh)) == 3
    plain = copy.deepcopy(model)
    plain.load_state_dict({**model.state_dict(), "fc.weight": torch.ones(4, 16)})
    assert _zeros(plain.fc.weight) == round(0.7 * 64)  # load post-hook re-applies the mask


def test_remove_masks_makes_pruning_permanent():
    model = _Net()
    prune_unstructured(model, amount=0.5, scope="layer")
    out = remove_masks(model)
    assert out == {"removed": 3, "layers": ["conv1d", "conv", "fc"]}
    assert not any(k.endswith("_mask") for k in model.state_dict())
    assert not any(
        isinstance(h, MaskForwardPreHook) for m in model.modules() for h in m._forward_pre_hooks.values()
    )
    assert _zeros(model.fc.weight) == 32 and masked_parameters(model) == []


def test_sparsity_report_counts_all_prunable_weights():
    model = _Net()
    prune_unstructured(model, amount=0.5, scope="layer", include=["fc"])
    rep = sparsity_report(model)
    assert rep["per_layer"] == {"conv1d": 0.0, "conv": 0.0, "fc": 0.5}
    assert rep["zeros"] == 32 and rep["total"] == 196 and rep["global"] == 32 / 196


def _lopsided_model() -> torch.nn.Module:
    """Two layers, the first with tiny weights: an uncapped global ranking empties it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 40))
    with torch.no_grad():
        model[0].weight.mul_(1e-3)
    return model


def test_global_floor_keeps_every_layer_alive_and_hits_the_amount_exactly() -> None:
    uncapped = _lopsided_model()
    s = prune_unstructured_(uncapped, amount=0.5, scope="global", max_layer_sparsity=1.0)
    assert s["per_layer"]["0"] == 1.0  # the defect: a whole layer gone

    model = _lopsided_model()
    s = prune_unstructured_(model, amount=0.5, scope="global", max_layer_sparsity=0.9)
    assert s["per_layer"]["0"] == pytest.approx(0.9)
    # 90 of layer 0's 100 weights go, so 250 - 90 = 160 of layer 1's 400 (the amount stays exact)
    assert s["zero_params"] == 250
    assert s["per_layer"]["1"] == pytest.approx(160 / 400)
    # the survivors of layer 0 are its 10 largest weights
    w = _lopsided_model()[0].weight.abs().flatten()
    kept = model[0].weight.flatten() != 0
    assert set(torch.nonzero(kept).flatten().tolist()) == set(torch.topk(w, 10).indices.tolist())
    assert s["max_layer_sparsity"] == 0.9


def test_global_floor_is_on_by_default_at_0_98() -> None:
    model = _lopsided_model()
    s = prune_unstructured_(model, amount=0.5, scope="global")
    assert s["per_layer"]["0"] == pytest.approx(0.98)
    assert s["zero_params"] == 250


def test_global_floor_that_cannot_reach_the_amount_is_a_clear_error() -> None:
    model = _lopsided_model()
    with pytest.raises(ConfigError, match="max_layer_sparsity=0.5"):
        prune_unstructured_(model, amount=0.6, scope="global", max_layer_sparsity=0.5)
    with pytest.raises(ConfigError, match="max_layer_sparsity"):
        prune_unstructured_(model, amount=0.5, scope="global", max_layer_sparsity=0.0)
