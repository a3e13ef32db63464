"""The zoo sweep's round 5 (benchmarks/zoo_sweep.py --round 5) takes its models from PyPI packages netcompress does
not depend on (monai, vit-pytorch, x-transformers, torch_geometric, rtdl, pytorch-tabnet): a package that is absent
is left out and named, never an ImportError. Where one is installed, one of its models passes a few verbs."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import zoo_sweep  # benchmarks/ is on sys.path (conftest.py)
import zoo_sweep_models4


def test_absent_packages_are_skipped_by_name(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "monai" else real(name, *a))
    reloaded = importlib.reload(zoo_sweep_models4)
    try:
        assert "monai" in reloaded.SKIPPED
        assert not [n for n in reloaded.ROUND5 if n.startswith("monai_")]
    finally:
        monkeypatch.undo()
        importlib.reload(zoo_sweep_models4)


@pytest.mark.parametrize(("name", "package"), [("rtdl_mlp", "rtdl_revisiting_models"), ("monai_densenet", "monai")])
def test_an_installed_packages_model_passes_the_sweep(name, package):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (round 5 skips it by name)")
    verbs = ["profile", "prune", "quant_int8", "save_load"]
    rows = zoo_sweep.sweep_model(name, "r5", verbs, seconds=120)
    assert {r["verb"]: r["status"] for r in rows} == dict.fromkeys(verbs, "ok")
