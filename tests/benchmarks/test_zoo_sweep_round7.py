"""The zoo sweep's round 7 (benchmarks/zoo_sweep.py --round 7) takes its models from peft, lucidrains' packages,
fair-esm, stable-baselines3, snntorch, brevitas, kornia and transformers classes rounds 1-6 did not build: a package
that is absent is left out and named, never an ImportError. Where one is installed, one of its models passes a few
verbs."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import zoo_sweep  # benchmarks/ is on sys.path (conftest.py)
import zoo_sweep_models6


def test_absent_packages_are_skipped_by_name(monkeypatch):
    real = importlib.util.find_spec
    absent = ("kornia", "g_mlp_pytorch")  # a whole family, and one of lucidrains' packages
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))
    reloaded = importlib.reload(zoo_sweep_models6)
    try:
        assert set(absent) <= set(reloaded.SKIPPED)
        assert not [n for n in reloaded.ROUND7 if n.startswith(("kornia_", "gmlp_"))]
    finally:
        monkeypatch.undo()
        importlib.reload(zoo_sweep_models6)


@pytest.mark.parametrize(
    ("name", "package", "verbs"),
    [
        ("kornia_tfeat", "kornia", ["profile", "prune", "quant_int8", "save_load"]),
        ("snn_leaky_cnn", "snntorch", ["profile", "wanda"]),
    ],
)
def test_an_installed_packages_model_passes_the_sweep(name, package, verbs):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (round 7 skips it by name)")
    rows = zoo_sweep.sweep_model(name, "r7", verbs, seconds=120)
    assert {r["verb"]: r["status"] for r in rows} == dict.fromkeys(verbs, "ok")
