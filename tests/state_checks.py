"""State-dict comparisons the contract tests share: same weights, a snapshot, untouched-since-snapshot."""

from __future__ import annotations

import torch
from torch import nn


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s state dict (a snapshot later changes cannot reach)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """True when both models hold the same state-dict keys with bit-equal tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Assert two state dicts are equal, naming the first key that differs."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    """True when ``model``'s state still equals the snapshot ``before`` (see ``state_of``)."""
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
