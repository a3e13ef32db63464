"""One measurement path: one top-1 loop, one eval-mode context, one name rule, one MAC counter.

Every number is exact (hand-built models and loaders); the modules that used to carry their own
copy are checked to call these.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.errors import DataError, UnsupportedModelError
from netcompress.core.selection import name_matches, select_modules
from netcompress.evaluation import (
    count_macs,
    count_total_macs,
    eval_mode,
    evaluate,
    top1_accuracy,
    top1_counts,
)


def _picker() -> nn.Linear:
    """Logits = inputs: the predicted class is the index of the largest input feature."""
    layer = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(3))
    return layer


def _loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    eye = torch.eye(3)
    # batch 1: predictions 0, 1, 2 vs labels 0, 1, 0 -> 2 right; batch 2: 2, 2 vs 2, 1 -> 1 right
    return [
        (eye, torch.tensor([0, 1, 0])),
        (torch.stack([eye[2], eye[2]]), torch.tensor([2, 1])),
    ]


def test_top1_counts_are_exact() -> None:
    counts = top1_counts(_picker(), _loader())
    assert counts == {
        "correct": 3, "total": 5, "loss_sum": None, "samples": 5, "task": "cross_entropy", "metric": "top1"
    }  # fmt: skip
    assert top1_counts(_picker(), _loader(), max_batches=1)["correct"] == 2
    assert top1_accuracy(_picker(), _loader()) == 3 / 5
    assert top1_accuracy(_picker(), _loader(), max_batches=1) == 2 / 3


def test_evaluate_is_the_same_loop_with_the_loss() -> None:
    model, loader = _picker(), _loader()
    result = evaluate(model, loader)
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    assert result["accuracy"] == 3 / 5 and result["num_samples"] == 5
    assert result["loss"] == pytest.approx(float(nn.functional.cross_entropy(x, y)), abs=1e-6)


def test_top1_without_samples() -> None:
    assert top1_accuracy(_picker(), None) is None
    assert top1_accuracy(_picker(), []) is None
    with pytest.raises(DataError, match="no samples"):
        evaluate(_picker(), [])


def test_tuple_inputs_are_positional_arguments() -> None:
    class TwoInputs(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a - b

    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loader = [((a, torch.zeros(2, 2)), torch.tensor([0, 0]))]
    assert top1_counts(TwoInputs(), loader)["correct"] == 1


def test_top1_rejects_outputs_that_are_not_logits() -> None:
    with pytest.raises(UnsupportedModelError, match="logits"):
        top1_counts(nn.Flatten(0), [(torch.zeros(2, 3), torch.tensor([0, 1]))])


def _mixed_modes() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Sequential(nn.BatchNorm1d(2), nn.ReLU()))
    model.train()
    model[1].eval()
    model[2][0].eval()
    return model


def _flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_eval_mode_restores_every_submodule() -> None:
    model = _mixed_modes()
    before = _flags(model)
    assert before == [True, True, False, True, False, True]
    with eval_mode(model) as inside:
        assert inside is model and not any(_flags(model))
    assert _flags(model) == before


def test_eval_mode_restores_on_exception() -> None:
    model = _mixed_modes()
    before = _flags(model)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert _flags(model) == before


def test_top1_restores_training_flags() -> None:
    model = _mixed_modes()
    before = _flags(model)
    top1_counts(model, [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))])
    assert _flags(model) == before


def test_mac_counter_matches_a_hand_count() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8 out channels * 6*6 positions * 3*3*3 = 7,776
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # 8 * 36 * (8/4)*3*3 = 5,184
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),  # 2,880
    )
    x = torch.randn(1, 3, 6, 6)
    hand = 8 * 36 * 27 + 8 * 36 * 2 * 9 + 288 * 10
    total, per_layer = count_macs(model, x)
    assert total == hand == 15_840
    assert per_layer == {"0": 7_776, "2": 5_184, "4": 2_880}
    assert count_total_macs(model, x) == hand
    assert count_macs(model, x, per_layer=False) == (hand, {})
    assert count_total_macs(model, torch.randn(2, 3, 6, 6)) == 2 * hand


def test_name_rule() -> None:
    assert name_matches("features.3", "features.3")
    assert not name_matches("features.3", "features")
    assert name_matches("features.3", r"re:features\.\d+")
    assert not name_matches("features.3.x", r"re:features\.\d+")  # a full match, not a search
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    assert list(select_modules(model, include=["re:[02]"], exclude=["2"])) == ["0"]


def test_the_old_copies_are_gone() -> None:
    """The modules that had their own copy now hold the one function (or call it)."""
    from netcompress.evaluation import harness, macs
    from netcompress.pruning import auto_strategies, bn_recalibration, channel, graph
    from netcompress.quantization import placement

    assert graph.eval_mode is harness.eval_mode
    assert channel.count_total_macs is macs.count_total_macs
    assert channel._matches is name_matches and placement._matches is name_matches
    assert bn_recalibration.top1_on_batches(_picker(), _loader(), 1) == 2 / 3
    assert auto_strategies._accuracy(_picker(), _loader(), 2) == 3 / 5
