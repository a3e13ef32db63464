"""The zoo sweep's round 4 (benchmarks/zoo_sweep.py --round 4) on two of its hand-written torch models: every cell
is ok (the sweep's own checks, e.g. pruned == masked over every output tensor), so the round's table, inputs and
verbs keep working. Tiny and torch-only (no transformers / diffusers needed)."""

from __future__ import annotations

import pytest
import zoo_sweep  # benchmarks/ is on sys.path (conftest.py)

VERBS = ["prune", "quant_int8", "save_load", "distill"]


@pytest.mark.parametrize("name", ["embbag_recsys", "conv_gru_audio"])
def test_round4_torch_models_pass_the_sweep(name):
    rows = zoo_sweep.sweep_model(name, "r4", VERBS, seconds=120)
    assert {r["verb"]: r["status"] for r in rows} == dict.fromkeys(VERBS, "ok")
