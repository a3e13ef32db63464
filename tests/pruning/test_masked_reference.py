"""``masked_reference``: the original with removed input channels zeroed, the model channel pruning must equal."""

from __future__ import annotations

import torch
from torch import nn

from netcompress.pruning import apply_channel_plan, masked_reference, plan_channel_pruning
from tests.state_checks import same_weights, state_of, unchanged


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2),
    ).eval()  # fmt: skip


def test_zeroes_exactly_the_removed_inputs_and_leaves_the_argument_untouched():
    model, x = _cnn(), torch.randn(2, 3, 6, 6)
    before = state_of(model)
    ref = masked_reference(model, {"2": {"in": [0, 3, 5], "out": None}, "8": {"in": [1, 4]}})
    assert unchanged(model, before) and same_weights(ref, model) and ref is not model
    by_hand = _cnn()
    with torch.no_grad():
        keep = torch.zeros(8)
        keep[[0, 3, 5]] = 1
        by_hand[2].weight.mul_(keep.view(1, -1, 1, 1))
        keep = torch.zeros(5)
        keep[[1, 4]] = 1
        by_hand[8].weight.mul_(keep)
    torch.testing.assert_close(ref(x), by_hand(x), rtol=0, atol=1e-6)
    assert not torch.allclose(ref(x), model(x), atol=1e-3)  # the mask changed something


def test_channel_pruning_equals_the_masked_reference():
    model, x = _cnn(), torch.randn(4, 3, 6, 6)
    plan = plan_channel_pruning(model, x, ratio=0.5)
    small = apply_channel_plan(model, plan, x)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(small(x), masked_reference(model, plan.keep_indices())(x), rtol=1e-5, atol=1e-5)
