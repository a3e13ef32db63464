"""The session-16 kept-channel hint: its loss is the formula on the kept channels only, and its row runs on a tiny
VGG (no CIFAR-10) and leaves no forward hook behind once closed."""

from __future__ import annotations

import copy

import cifar_protocol as cp
import pruning_latency as pl
import pruning_vgg_hint as vh
import torch
import torch.nn.functional as F
from pruning_methods import METHODS, Context, PruningBenchConfig, macs_of
from torch import nn

from netcompress.models.vgg import cifar_vgg

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _vgg() -> nn.Module:
    torch.manual_seed(0)
    return cifar_vgg(cfg=[8, 8, "M", 16], num_classes=10).eval()


def _acts(model: nn.Module) -> list[torch.Tensor]:
    out, x = [], X
    for m in model.features:
        x = m(x)
        if isinstance(m, nn.ReLU):
            out.append(x)
    return out


def test_rows_are_registered_and_block_outputs_pair_convs_with_their_relus() -> None:
    assert all(name in METHODS.names() and name in pl.LATENCY_ROWS for name in vh.HINT_ROWS)
    assert vh.block_outputs(_vgg()) == {
        "features.0": "features.2",
        "features.3": "features.5",
        "features.7": "features.9",
    }


def test_hint_loss_is_the_mse_on_the_kept_channels_only() -> None:
    teacher, student = _vgg(), _vgg()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))
    keep = {"features.0": [0, 2, 5], "features.3": None, "features.7": [1, 3, 4, 8]}
    hint = vh.KeptChannelHint(teacher, keep, weight=0.5)
    hint.attach(student, full_width=True)
    base_loss = torch.tensor(1.25)
    with torch.no_grad():
        got = hint.loss(student, X, student(X), None, base_loss)
        s, t = _acts(student), _acts(teacher)
    expected = sum(
        F.mse_loss(a[:, k] if k is not None else a, b[:, k] if k is not None else b)
        for a, b, k in zip(s, t, keep.values())
    )
    assert torch.allclose(got, base_loss + 0.5 * expected)
    assert float(expected) > 0
    # a channel of the last block that is not kept does not enter the loss
    with torch.no_grad():
        student.features[7].weight[0].add_(3.0)
        hint.after_step(student)
        again = hint.loss(student, X, student(X), None, base_loss)
    assert torch.allclose(again, got)
    hint.close()
    assert not any(m._forward_hooks for m in [*teacher.modules(), *student.modules()])


def test_the_hint_row_reaches_the_budget_and_its_hooks_come_off(tmp_path) -> None:
    torch.manual_seed(0)
    base = cifar_vgg(cfg=[16, 16, "M", 32, 32], num_classes=10).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(3)
    ]
    config = PruningBenchConfig(high_mac_reduction=4.0, finetune_epochs=5)
    example = torch.randn(1, 3, 8, 8)
    ctx = Context(None, cp.PROTOCOLS["quick"], config, batches, batches, example, 0, tmp_path)
    before = copy.deepcopy(base.state_dict())
    pruned = METHODS.get("nc_macs_high_shrink2_hint1")(base, ctx)
    assert pruned.epochs_used == 2
    assert 4.0 <= macs_of(base, example) / macs_of(pruned.model, example) <= 4.0 * 1.1
    assert all(r["hint_loss"] > 0 for r in pruned.info["fade_history"])
    (hint,) = pruned.hooks
    assert any(
        m._forward_hooks for m in pruned.model.modules()
    )  # attached to the small model for the fine-tune
    hint.close()
    assert not any(m._forward_hooks for m in pruned.model.modules())
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
