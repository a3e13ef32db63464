"""The zoo sweep's compress verb set (benchmarks/zoo_sweep.py --verb-set compress) on two of round 4's torch
models: every cell is ok (clustered layers keep <= k values through a fine-tune step, the compressed file
reloads to equal outputs, QAT exports with integer kernels within ORT tolerance, full-energy SVD reproduces
the outputs, BN folding keeps them). Torch-only."""

from __future__ import annotations

import pytest
import zoo_sweep  # benchmarks/ is on sys.path (conftest.py)
import zoo_sweep_verbs_compress


@pytest.mark.parametrize("name", ["grouped_dilated", "conv_gru_audio"])
def test_compress_verbs_pass_the_sweep_on_torch_models(name):
    verbs = list(zoo_sweep_verbs_compress.VERBS)
    rows = zoo_sweep.sweep_model(name, "r4", verbs, seconds=120, verb_set=zoo_sweep_verbs_compress.VERBS)
    assert {r["verb"]: r["status"] for r in rows} == dict.fromkeys(verbs, "ok"), [r["detail"] for r in rows]
