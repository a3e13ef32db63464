"""benchmarks/early_exit_ztw.py helpers: the shorter-baseline protocol, the ensemble's MACs on the path, and the
offline routing row (accuracy, shares, average MACs) the test split is read with."""

from __future__ import annotations

from types import SimpleNamespace

import early_exit as eeb
import early_exit_ztw as ztw
import torch

from netcompress.dynamic import ExitEnsemble


def test_baseline_epochs_gives_a_shorter_one_thread_protocol_and_leaves_the_default_alone():
    short = eeb.protocol_of(SimpleNamespace(quick=False, baseline_epochs=4))
    assert (short.epochs, short.train_threads, short.train_subset) == (4, 1, 10000)
    default = eeb.protocol_of(SimpleNamespace(quick=False, baseline_epochs=None))
    assert (default.epochs, default.train_threads) == (15, 2)


def test_ensemble_macs_add_each_exits_weighted_rows_along_the_path():
    assert ztw.ensemble_macs([100, 200, 300], 10, None) == [100.0, 200.0, 300.0]
    with_final = ExitEnsemble(num_exits=3, num_classes=10)
    assert ztw.ensemble_macs([100, 200, 300], 10, with_final) == [110.0, 230.0, 360.0]
    without = ExitEnsemble(num_exits=3, num_classes=10, include_final=False)
    assert ztw.ensemble_macs([100, 200, 300], 10, without) == [110.0, 230.0, 330.0]


def test_routed_rows_read_each_sample_at_its_exit():
    labels = torch.tensor([0, 1, 1, 0])
    head = torch.tensor([[9.0, 0.0], [9.0, 0.0], [0.0, 0.1], [0.0, 0.1]])  # sure of 0 on the first two
    final = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    row = ztw.routed_rows([head, final], labels, [0.9], [10.0, 30.0])
    assert row["shares"] == [0.5, 0.5]
    assert row["accuracy"] == 0.75  # sample 1 leaves early and wrong, 2 and 3 go on and are right
    assert row["macs"] == 20.0
