"""The zoo sweep's round 6 (benchmarks/zoo_sweep.py --round 6) takes its models from pytorchcv, diffusers and
transformers classes rounds 1-5 did not build: a package that is absent is left out and named, never an
ImportError. Where one is installed, one of its models passes a few verbs."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import zoo_sweep  # benchmarks/ is on sys.path (conftest.py)
import zoo_sweep_models5


def test_absent_packages_are_skipped_by_name(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytorchcv" else real(name, *a))
    reloaded = importlib.reload(zoo_sweep_models5)
    try:
        assert "pytorchcv" in reloaded.SKIPPED
        assert not [n for n in reloaded.ROUND6 if n.startswith("pcv_")]
    finally:
        monkeypatch.undo()
        importlib.reload(zoo_sweep_models5)


@pytest.mark.parametrize(
    ("name", "package", "verbs"),
    [
        ("pcv_seresnet20", "pytorchcv", ["profile", "quant_int8", "save_load"]),
        ("hf_fnet", "transformers", ["profile", "save_load", "wanda"]),  # torch.fft: saved, not exported
    ],
)
def test_an_installed_packages_model_passes_the_sweep(name, package, verbs):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (round 6 skips it by name)")
    rows = zoo_sweep.sweep_model(name, "r6", verbs, seconds=120)
    assert {r["verb"]: r["status"] for r in rows} == dict.fromkeys(verbs, "ok")
