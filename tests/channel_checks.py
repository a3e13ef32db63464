"""The channel-pruning check shared by tests of graph rules: pruned == the masked original, and smaller."""

from __future__ import annotations

import torch
from torch import nn

from netcompress.pruning import masked_reference
from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning


def pruned_equals_masked(model: nn.Module, x: torch.Tensor, *, randomise_bn: bool = False) -> nn.Module:
    """Prune ``model`` (eval mode) at ratio 0.3 and assert the result has fewer parameters, equals the original with
    the removed input channels zeroed, and differs from the unpruned output (the comparison sees what was removed);
    ``randomise_bn``: give every BatchNorm2d non-trivial running statistics first. Returns the pruned model."""
    model.eval()
    if randomise_bn:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
    plan = plan_channel_pruning(model, x, ratio=0.3)
    small = apply_channel_plan(model, plan, x)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        got, want, full = small(x), masked_reference(model, plan.keep_indices())(x), model(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.shape == full.shape and (got - full).abs().max() > 1e-4
    return small
