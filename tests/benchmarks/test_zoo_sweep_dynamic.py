"""The zoo sweep's dynamic verb set (benchmarks/zoo_sweep.py --verb-set dynamic) on hand-written torch models of
round 4: every cell of a plain grouped/dilated CNN is ok (the sweep's own checks: early-exit batched == per-sample
routing and ORT export, extracted width == slimmable width, pruned == masked), and an RNN classifier's neuron
pruning is refused by name rather than returned unchanged."""

from __future__ import annotations

import zoo_sweep  # benchmarks/ is on sys.path (conftest.py)

VERBS = ["early_exit", "slimmable", "apoz", "mean_act", "target_macs", "global_l1"]


def test_dynamic_verbs_pass_on_a_grouped_dilated_cnn():
    rows = zoo_sweep.sweep_model("grouped_dilated", "r4", VERBS, seconds=120, verb_set=zoo_sweep.VERB_SETS["dynamic"])
    assert {r["verb"]: r["status"] for r in rows} == dict.fromkeys(VERBS, "ok"), rows


def test_neuron_pruning_of_an_rnn_classifier_is_refused_by_name():
    rows = zoo_sweep.sweep_model("lstm_bi_2l", "r4", ["apoz"], seconds=120, verb_set=zoo_sweep.VERB_SETS["dynamic"])
    assert [r["status"] for r in rows] == ["refused"]
    assert "no neuron group to prune" in rows[0]["detail"]
