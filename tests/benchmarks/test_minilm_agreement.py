"""benchmarks/minilm_agreement.py: embeddings moved to a set mean cosine, isotropically or along a student."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
agreement = importlib.import_module("benchmarks.minilm_agreement")  # on sys.path: see conftest.py


def _unit(n: int = 40, d: int = 16, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


def test_isotropic_noise_reaches_the_asked_mean_cosine():
    t = _unit()
    for c in (0.9, 0.99):
        moved = agreement.isotropic_at(t, c, seed=1)
        assert float(F.cosine_similarity(moved, t, dim=1).mean()) == pytest.approx(c, abs=1e-6)
    assert not torch.equal(agreement.isotropic_at(t, 0.9, seed=1), agreement.isotropic_at(t, 0.9, seed=2))


def test_along_student_shrinks_the_students_error():
    t, u = _unit(), _unit(seed=3)
    moved = agreement.along_student(t, 0.5 * t + 0.5 * u, 0.99)
    cos = F.cosine_similarity(moved, t, dim=1).mean()
    assert float(cos) == pytest.approx(0.99, abs=1e-6)
    # on the straight line from t to the student
    direction = (moved - t) / (0.5 * u - 0.5 * t)
    assert float(direction.std()) < 1e-6
    assert agreement.along_student(t, t + 1e-9 * u, 0.99) is None  # already closer than asked
