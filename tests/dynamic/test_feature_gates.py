"""Exit gates on the heads' pooled features: a constructed case only the features reveal, MAC counting,
the batched routed forward against the offline routing, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress import models
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.dynamic import (
    FeatureExitGates,
    add_early_exits,
    choose_exit_thresholds,
    choose_gate_thresholds,
    collect_exit_features,
    collect_exit_logits,
    fit_exit_gates,
    fit_feature_gates,
    gate_trade_off,
    gated_exit_macs,
)
from tests.dynamic.gate_routing import check_routed_forward

MACS = [10, 20, 40]


def _synthetic(n: int, seed: int):
    """Three exits, ten classes, labels = the final exit's argmax. Both heads are equally sure of their
    class on every sample (logit 4 on it), so their logits say nothing about being right; head ``i``
    agrees with the final exit on a random ~half (``agree[i]``), and its 8 pooled features are noise
    except feature 3, which is ``+1`` where it agrees and ``-1`` where not."""
    g = torch.Generator().manual_seed(seed)
    final_cls = torch.randint(0, 10, (n,), generator=g)
    eye = torch.eye(10)
    logits, feats, agree = [], [], []
    for _ in range(2):
        a = torch.rand(n, generator=g) < 0.5
        wrong = (final_cls + torch.randint(1, 10, (n,), generator=g)) % 10
        logits.append(4.0 * eye[torch.where(a, final_cls, wrong)])
        f = torch.randn(n, 8, generator=g)
        f[:, 3] = a.float() * 2 - 1
        feats.append(f)
        agree.append(a)
    logits.append(5.0 * eye[final_cls])
    return feats, logits, final_cls, agree


def test_feature_gate_picks_exactly_the_agreeing_samples():
    feats, logits, _, _ = _synthetic(2000, seed=0)
    gates = fit_feature_gates(feats, logits, logit_features=False)
    vf, vl, vy, agree = _synthetic(2000, seed=1)
    scores = gates.scores(vl, vf)
    for s, a in zip(scores, agree):
        assert float(s[a].min()) > 0.75 and float(s[~a].max()) < 0.25  # separated, whatever the noise
    pick = choose_gate_thresholds(gates, vl, vy, exit_macs=MACS, max_accuracy_drop=0.0, exit_features=vf)
    # every sample whose head 0 agrees leaves there, of the rest those whose head 1 agrees at 1
    want = [int(agree[0].sum()), int((~agree[0] & agree[1]).sum()), int((~agree[0] & ~agree[1]).sum())]
    assert pick["accuracy"] == 1.0 and pick["exit_counts"] == want
    shares = torch.tensor(want, dtype=torch.float64) / 2000
    assert pick["expected_macs"] == pytest.approx(float((shares * torch.tensor(MACS).double()).sum()))
    # logit gates and per-exit confidence see identical logits on right and wrong samples: nobody leaves
    conf = choose_exit_thresholds(vl, vy, exit_macs=MACS, max_accuracy_drop=0.0)
    assert conf["accuracy"] == 1.0 and conf["exit_counts"] == [0, 0, 2000]
    logit_pick = choose_gate_thresholds(fit_exit_gates(logits), vl, vy, exit_macs=MACS, max_accuracy_drop=0.0)
    assert logit_pick["exit_counts"] == [0, 0, 2000]
    # a fresh draw (the test split): the same rule, the same exactness
    tf, tl, ty, tagree = _synthetic(1000, seed=2)
    row = gate_trade_off(gates, tl, ty, exit_macs=MACS, thresholds=pick["thresholds"], exit_features=tf)
    assert row["accuracy"] == 1.0 and row["exit_counts"][0] == int(tagree[0].sum())


def test_gate_macs_counted_per_exit():
    lr = FeatureExitGates([16, 32], hidden=0)
    assert lr.macs() == [16 + 6, 32 + 6]
    mlp = FeatureExitGates([16, 32], hidden=8, logit_features=False)
    assert mlp.macs() == [16 * 8 + 8, 32 * 8 + 8]
    assert sum(p.numel() for p in mlp.parameters()) == (16 * 8 + 8 + 8 + 1) + (32 * 8 + 8 + 8 + 1)
    # leaving at exit i paid gates 0..i; reaching the final exit paid both
    assert gated_exit_macs([100, 200, 400], lr) == [122, 260, 460]
    logit_gates = fit_exit_gates([torch.randn(4, 3)] * 3, steps=1)  # 6 features -> 1: 6 MACs per head
    assert gated_exit_macs([100, 200, 400], logit_gates) == [106, 212, 412]
    with pytest.raises(ConfigError, match="2 gates for 2 exits"):
        gated_exit_macs([100, 400], lr)


def _digits_exits():
    torch.manual_seed(0)
    model = models.create("digits_cnn").eval()
    x = torch.randn(64, 1, 8, 8)
    ee = add_early_exits(
        model, exits=["features.2", "features.5"], example_inputs=x[:1], head="pool_grid_linear"
    )
    return ee.eval(), x


def test_routed_forward_with_feature_gates_equals_offline_routing():
    ee, x = _digits_exits()
    feats, logits, labels = collect_exit_features(ee, [(x, torch.zeros(64, dtype=torch.long))])
    ref_logits, _ = collect_exit_logits(ee, [(x, torch.zeros(64, dtype=torch.long))])
    for a, b in zip(logits, ref_logits):
        torch.testing.assert_close(a, b)
    assert [f.shape[1] for f in feats] == [h.fc.in_features for h in ee.heads]
    gates = fit_feature_gates(feats, logits, hidden=4, steps=30)
    expected = check_routed_forward(ee, gates, gates.scores(logits, feats), logits, x)
    assert ee.last_exit_counts == torch.bincount(expected, minlength=3).tolist()


class _OpaqueHead(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.inner = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_feature_gate_refusals_are_named():
    ee, x = _digits_exits()
    gates = FeatureExitGates([h.fc.in_features for h in ee.heads])
    logits = [torch.zeros(3, 10)] * 3
    with pytest.raises(ConfigError, match="need one features tensor per head; got none"):
        gates.scores(logits)
    with pytest.raises(ConfigError, match=r"feature gate 0: features of shape \(3, 5\)"):
        gates.scores(logits, [torch.zeros(3, 5), torch.zeros(3, gates.feature_sizes[1])])
    with pytest.raises(ConfigError, match="needs the head's pooled features"):
        gates.leave(0, logits[0], None, 0.5)
    with pytest.raises(ConfigError, match="2 features, 2 logits"):
        fit_feature_gates([torch.zeros(3, 4)] * 2, logits[:2])
    with pytest.raises(ConfigError, match="gate for 1 heads"):
        ee.set_gate(FeatureExitGates([4]), [0.5])
    ee.heads[1] = _OpaqueHead(ee.heads[1])
    with pytest.raises(UnsupportedModelError, match=r"head at 'features.5' \(_OpaqueHead\) has no features"):
        ee.set_gate(gates, [0.5, 0.5])
    with pytest.raises(UnsupportedModelError, match="_OpaqueHead"):
        collect_exit_features(ee, [(x, torch.zeros(64))])
    ee.set_gate(fit_exit_gates(collect_exit_logits(ee, [(x, torch.zeros(64))])[0], steps=5), [0.5, 0.5])
    assert ee.exit_gate is not None  # logit gates need no features: any head is fine
