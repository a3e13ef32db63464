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


def test_error_shape_against_direct_counts():
    t = _unit(n=6, d=4, seed=0)
    # every sentence a little off, sentence 2 far off
    u = F.normalize(t + 0.05 * _unit(n=6, d=4, seed=1), dim=1)
    u[2] = F.normalize(t[2] + 2.0 * _unit(n=1, d=4, seed=2)[0], dim=0)
    e = agreement.error_shape(t, u, worst=1)
    gaps = [1.0 - float(t[i] @ u[i]) for i in range(6)]
    assert e["gap_mean"] == pytest.approx(sum(gaps) / 6)
    assert e["gap_max"] == pytest.approx(max(gaps)) and max(gaps) == pytest.approx(gaps[2])
    assert e["worst_share"] == pytest.approx(gaps[2] / sum(gaps))
    changed = []
    for i in range(6):
        others = [j for j in range(6) if j != i]
        nt = max(others, key=lambda j: float(t[i] @ t[j]))
        nu = max(others, key=lambda j: float(u[i] @ u[j]))
        changed.append(nt != nu)
    assert e["changed"] == sum(changed)
    assert 0 < sum(changed) < 6  # the far sentence's neighbour changed, not every one
    assert e["gap_changed"] == pytest.approx(sum(g for g, c in zip(gaps, changed) if c) / sum(changed))
    # the same embeddings: nothing changed, no gap
    same = agreement.error_shape(t, t)
    assert same["changed"] == 0 and same["gap_max"] == pytest.approx(0.0, abs=1e-12)
    assert same["gap_changed"] != same["gap_changed"]  # NaN: no changed sentence


def test_direction_share_finds_an_error_along_the_teachers_main_direction():
    g = torch.Generator().manual_seed(0)
    # teacher embeddings spread mostly along axis 0
    t = F.normalize(torch.randn(50, 6, generator=g, dtype=torch.float64) * torch.tensor([5.0, 1, 1, 1, 1, 1]), dim=1)
    along = t.clone()
    along[:, 0] += 0.1  # error all along axis 0
    across = t.clone()
    across[:, 5] += 0.1  # error along a minor axis
    s_along = agreement.direction_share(t, along, ks=(1, 6))
    s_across = agreement.direction_share(t, across, ks=(1, 6))
    assert s_along["teacher_1"] > 0.5 and s_along["teacher_6"] == pytest.approx(1.0)
    assert s_along["error_1"] > 0.9 and s_across["error_1"] < 0.1
    assert s_along["error_6"] == pytest.approx(1.0) and s_across["error_6"] == pytest.approx(1.0)
