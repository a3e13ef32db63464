"""``nc.pruning.masked_reference(model, plan)``: one function for the three plan types (a channel plan or its
``keep_indices()``, a ``TransformerPlan``, head-dim pruning's ``kept``), each giving what the plan's own reference
gives, on a copy; anything else is refused naming its type."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.pruning import apply_channel_plan, masked_reference, plan_channel_pruning
from netcompress.pruning.transformer_blocks import find_blocks
from netcompress.pruning.transformer_head_dim import apply_head_dims_, head_dim_scores
from netcompress.pruning.transformer_head_dim import masked_reference as head_dim_reference
from netcompress.pruning.transformer_pruning import TransformerPruneConfig, transformer_prune
from netcompress.pruning.transformer_surgery import TransformerPlan
from netcompress.pruning.transformer_verify import masked_reference as transformer_reference
from tests.pruning.transformer_cases import IDS, HandModel

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()  # fmt: skip


def test_a_channel_plan_and_its_keep_indices_give_the_same_reference() -> None:
    model = _cnn()
    plan = plan_channel_pruning(model, X, ratio=0.5)
    small = apply_channel_plan(model, plan, X)
    with torch.no_grad():
        by_plan, by_keep = masked_reference(model, plan)(X), masked_reference(model, plan.keep_indices())(X)
        torch.testing.assert_close(small(X), by_plan, atol=1e-5, rtol=1e-5)
    assert torch.equal(by_plan, by_keep)


def test_a_transformer_plan_gives_the_verifiers_reference() -> None:
    model = HandModel().eval()
    small, summary = transformer_prune(model, IDS, TransformerPruneConfig(heads=0.5, ffn=0.5))
    plan = TransformerPlan(
        heads={h["name"]: h["kept"] for h in summary["heads"]},
        kv_heads={h["name"]: h["kept"] for h in summary["heads"]},
        neurons={f["name"]: f["kept"] for f in summary["ffn"]},
        hidden=None,
        hidden_width=summary["hidden_before"],
    )
    blocks = find_blocks(model)
    with torch.no_grad():
        want = transformer_reference(model, blocks, plan, None)(IDS)
        got = masked_reference(model, plan)(IDS)
    assert torch.equal(got, want) and not torch.equal(got, model(IDS))


def test_head_dim_kept_gives_the_head_dim_reference_on_a_copy() -> None:
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    before = copy.deepcopy(model.state_dict())
    small = copy.deepcopy(model)
    kept = apply_head_dims_(small, head_dim_scores(small), 0.5, 0.25)
    with torch.no_grad():
        got = masked_reference(model, kept)(x)
        want = head_dim_reference(copy.deepcopy(model), kept)(x)
        torch.testing.assert_close(small(x), got, atol=1e-5, rtol=1e-5)
    assert torch.equal(got, want)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was masked


def test_anything_else_is_refused_naming_its_type() -> None:
    with pytest.raises(ConfigError, match="a plan of type list is none of the pruning plans"):
        masked_reference(_cnn(), [1, 2])
