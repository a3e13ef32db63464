"""Learned exit gates: features, fitting on a case whose right rule is known, threshold choice, routed forward."""

from __future__ import annotations

import pytest
import torch

from netcompress import models
from netcompress.core.errors import ConfigError
from netcompress.dynamic import (
    ExitGates,
    add_early_exits,
    choose_exit_thresholds,
    choose_gate_thresholds,
    fit_exit_gates,
    gate_features,
    gate_trade_off,
    route_by_scores,
)
from tests.dynamic.gate_routing import check_routed_forward

MACS = [10, 20, 40]


def _synthetic(n: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Three exits, ten classes, labels = the final exit's argmax. Head 0 is equally sure (logit 3)
    of its class everywhere; head 1's confidence is random and the same for every sample kind. On
    half the samples (A) heads 0 and 1 both say the final class; on the others head 1 says a wrong
    class and head 0 yet another. So head 1 agrees with the final exit EXACTLY when it agrees with
    head 0, and no confidence threshold can tell."""
    g = torch.Generator().manual_seed(seed)
    final_cls = torch.randint(0, 10, (n,), generator=g)
    a = torch.rand(n, generator=g) < 0.5
    wrong1 = (final_cls + torch.randint(1, 10, (n,), generator=g)) % 10
    wrong0 = (wrong1 + torch.randint(1, 10, (n,), generator=g)) % 10
    wrong0 = torch.where(wrong0 == final_cls, (wrong0 + 1) % 10, wrong0)
    wrong0 = torch.where(wrong0 == wrong1, (wrong0 + 1) % 10, wrong0)
    wrong0 = torch.where(wrong0 == final_cls, (wrong0 + 1) % 10, wrong0)
    cls1 = torch.where(a, final_cls, wrong1)
    cls0 = torch.where(a, final_cls, wrong0)
    eye = torch.eye(10)
    head0 = 3.0 * eye[cls0]
    head1 = (1.0 + 4.0 * torch.rand(n, 1, generator=g)) * eye[cls1]
    final = 5.0 * eye[final_cls]
    return [head0, head1, final], final_cls


def test_gate_features_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).log_softmax(1)  # probs (e^2/(1+e^2), ...), (0.5, 0.5)
    prev = torch.tensor([[0.0, 5.0], [1.0, 0.0]])
    f = gate_features(logits, prev)
    p = torch.tensor(2.0).exp() / (1 + torch.tensor(2.0).exp())
    assert f[0, 0] == pytest.approx(float(p), abs=1e-6)
    assert f[0, 1] == pytest.approx(float(2 * p - 1), abs=1e-6)
    assert f[1, 2] == pytest.approx(1.0, abs=1e-6)  # uniform: normalised entropy 1
    assert f[:, 3].tolist() == [0.0, 1.0]  # sample 0: argmax 0 vs previous 1; sample 1: both 0
    q = torch.tensor(5.0).exp() / (1 + torch.tensor(5.0).exp())
    assert f[0, 4] == pytest.approx(float(q), abs=1e-6) and f[0, 5] == pytest.approx(float(1 - q), abs=1e-6)
    assert gate_features(logits, None)[:, 3:].abs().sum() == 0


def test_gate_learns_the_agreement_rule_that_confidence_cannot_see():
    train_logits, _ = _synthetic(2000, seed=0)
    gates = fit_exit_gates(train_logits)
    val_logits, val_labels = _synthetic(2000, seed=1)
    scores = gates.scores(val_logits)
    agree1 = val_logits[1].argmax(1) == val_logits[0].argmax(1)
    assert bool((scores[1][agree1] > 0.9).all()) and bool((scores[1][~agree1] < 0.1).all())
    assert float(scores[0].std()) < 1e-5  # head 0's features are constant: one score for everyone
    pick = choose_gate_thresholds(gates, val_logits, val_labels, exit_macs=MACS, max_accuracy_drop=0.0)
    # head 0 lets nobody out (everyone would lose half), head 1 lets out exactly the A samples
    assert pick["accuracy"] == 1.0 and pick["exit_counts"] == [0, int(agree1.sum()), int((~agree1).sum())]
    share = float(agree1.double().mean())
    assert pick["expected_macs"] == pytest.approx(20 * share + 40 * (1 - share))
    assert pick["macs_speedup"] > 1.3
    # max-softmax confidence, even one threshold per exit chosen on these very samples: ~nothing
    conf = choose_exit_thresholds(val_logits, val_labels, exit_macs=MACS, max_accuracy_drop=0.0)
    assert conf["accuracy"] == 1.0 and conf["macs_speedup"] < 1.02
    # a fresh draw (the test split): same routing rule, same result
    test_logits, test_labels = _synthetic(1000, seed=2)
    row = gate_trade_off(gates, test_logits, test_labels, exit_macs=MACS, thresholds=pick["thresholds"])
    agree_test = test_logits[1].argmax(1) == test_logits[0].argmax(1)
    assert row["accuracy"] == 1.0 and row["exit_counts"][1] == int(agree_test.sum())


def test_gate_threshold_under_a_mac_budget():
    train_logits, _ = _synthetic(1000, seed=0)
    gates = fit_exit_gates(train_logits, hidden=8)
    assert sum(p.numel() for p in gates.parameters()) == 2 * (6 * 8 + 8 + 8 + 1)
    val_logits, val_labels = _synthetic(1000, seed=1)
    pick = choose_gate_thresholds(gates, val_logits, val_labels, exit_macs=MACS, max_macs=15.0)
    assert pick["expected_macs"] <= 15.0 and pick["bound"] == {"max_macs": 15.0}


def test_route_by_scores_and_errors():
    scores = [torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0.0, 0.8, 0.3])]
    assert route_by_scores(scores, [0.5, 0.5]).tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="2 thresholds for 1"):
        route_by_scores(scores[:1], [0.5, 0.5])
    with pytest.raises(ConfigError, match="exactly one"):
        choose_gate_thresholds(ExitGates(2), [torch.zeros(3, 2)] * 3, torch.zeros(3).long(), exit_macs=MACS)
    with pytest.raises(ConfigError, match="3 exits' logits for gates of 1"):
        ExitGates(1).scores([torch.zeros(3, 2)] * 3)


def test_routed_forward_uses_the_gate_exactly():
    torch.manual_seed(0)
    model = models.create("digits_cnn").eval()
    x = torch.randn(64, 1, 8, 8)
    ee = add_early_exits(model, exits=["features.2", "features.5"], example_inputs=x[:1]).eval()
    with torch.no_grad():
        all_logits = ee.forward_all(x)
    gates = fit_exit_gates(all_logits, steps=50)
    check_routed_forward(ee, gates, gates.scores(all_logits), all_logits, x)
    ee.set_gate(None, None)
    with torch.no_grad():
        torch.testing.assert_close(ee(x), all_logits[-1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="gate for 3 heads"):
        ee.set_gate(ExitGates(3), [0.5] * 3)
