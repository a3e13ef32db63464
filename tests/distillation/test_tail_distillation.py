"""The worst-sentence term of embedding distillation (issue 15): ``tail_cosine_loss`` weights the gaps
``1 - cos(student, teacher)`` towards the batch's largest, or keeps only its hardest ``k`` sentences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.distillation import EmbeddingDistillation, distill_transformer_
from netcompress.distillation.transformer_losses import tail_cosine_loss
from netcompress.training import TrainConfig, fit
from tests.tiny_hf import bert_encoder, sentence_batches

transformers = pytest.importorskip("transformers")

QUIET = {"progress": False}


def _direct(s: torch.Tensor, t: torch.Tensor, power: float, top_k: int) -> float:
    gaps = [1.0 - float(F.cosine_similarity(s[i], t[i], dim=0)) for i in range(len(s))]
    if top_k:
        gaps = sorted(gaps, reverse=True)[:top_k]
    return sum(g**power for g in gaps) / sum(g ** (power - 1) for g in gaps)


@pytest.mark.parametrize("power, top_k", [(1.0, 0), (2.0, 0), (3.5, 0), (1.0, 3), (3.0, 4)])
def test_tail_loss_against_a_direct_computation(power, top_k):
    torch.manual_seed(0)
    s, t = torch.randn(10, 6), torch.randn(10, 6)
    assert float(tail_cosine_loss(s, t, power=power, top_k=top_k)) == pytest.approx(
        _direct(s, t, power, top_k), rel=1e-5
    )


def test_tail_loss_is_zero_for_equal_directions_and_weights_the_worst_sentence_most():
    torch.manual_seed(0)
    t = torch.randn(8, 16)
    for power, top_k in ((1.0, 0), (3.0, 0), (2.0, 3)):
        assert float(tail_cosine_loss(t * 2.5, t, power=power, top_k=top_k)) == pytest.approx(0.0, abs=1e-6)
    # one sentence far off, the others slightly: the tail value sits near the far one's gap, the mean does not
    s = t + 0.05 * torch.randn(8, 16)
    s[3] = t[3] + 3.0 * torch.randn(16)
    far = float(1 - F.cosine_similarity(s[3], t[3], dim=0))
    plain = float(tail_cosine_loss(s, t, power=1.0))
    tail = float(tail_cosine_loss(s, t, power=3.0))
    assert plain == pytest.approx(float((1 - F.cosine_similarity(s, t, dim=-1)).mean()), rel=1e-6)
    assert far > 0.3 and 0.95 * far < tail <= far and plain < 0.2 * far
    # the gradient goes (almost) all to the far sentence; the plain mean spreads it
    x = s.clone().requires_grad_(True)
    tail_cosine_loss(x, t, power=3.0).backward()
    norms = x.grad.norm(dim=1)
    assert norms.argmax() == 3 and float(norms[3]) > 0  # the other rows: weights ~ (gap / 2)^2
    assert float(norms[[i for i in range(8) if i != 3]].max()) < 0.01 * float(norms[3]) + 1e-9
    # top_k=1 keeps only the far sentence
    assert float(tail_cosine_loss(s, t, power=1.0, top_k=1)) == pytest.approx(
        float(1 - F.cosine_similarity(s[3], t[3], dim=0)), rel=1e-6
    )


def test_tail_loss_lowers_the_tail_that_the_mean_leaves():
    """A linear student that cannot fit a non-linear teacher everywhere, trained the same number of steps:
    the tail loss ends with a smaller worst gap (and hardest-6 mean) than the plain mean gap, at some cost
    to the mean."""

    def train(power: float, top_k: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 6, generator=g)
        t = torch.tanh(2 * x @ torch.randn(6, 8, generator=g))
        w = torch.nn.Parameter(0.1 * torch.randn(6, 8, generator=g))
        opt = torch.optim.Adam([w], lr=0.02)
        for _ in range(300):
            opt.zero_grad()
            tail_cosine_loss(x @ w, t, power=power, top_k=top_k).backward()
            opt.step()
        return (1 - F.cosine_similarity(x @ w, t, dim=-1)).detach()

    plain = train(1.0, 0)
    for power, top_k in ((3.0, 0), (1.0, 8)):
        tail = train(power, top_k)
        assert float(tail.max()) < 0.85 * float(plain.max())
        assert float(tail.topk(6).values.mean()) < 0.9 * float(plain.topk(6).values.mean())
        assert float(tail.mean()) > float(plain.mean())  # the mean is what the plain loss minimises


def test_tail_loss_refuses_bad_settings():
    with pytest.raises(ConfigError, match="one shape"):
        tail_cosine_loss(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ConfigError, match="power"):
        tail_cosine_loss(torch.randn(4, 3), torch.randn(4, 3), power=0.5)
    with pytest.raises(ConfigError, match="top_k"):
        tail_cosine_loss(torch.randn(4, 3), torch.randn(4, 3), top_k=-1)


def test_the_hook_adds_the_tail_term_and_reports_it():
    teacher, batches = bert_encoder(), sentence_batches()
    student = nc.prune_transformer(teacher, batches[0], heads=0.5, ffn=0.5)
    cfg = TrainConfig(epochs=1, optimizer="adamw", lr=0.0, **QUIET)  # lr 0: the losses of one fixed student
    plain = fit(student, batches, config=cfg, hooks=[EmbeddingDistillation(teacher)]).rows[-1]
    with_tail = fit(
        student, batches, config=cfg,
        hooks=[EmbeddingDistillation(teacher, tail_weight=3.0, tail_power=3.0, tail_top_k=5)],
    ).rows[-1]  # fmt: skip
    assert "tail_loss" not in plain and with_tail["tail_loss"] > 0.0
    assert with_tail["embedding_loss"] == pytest.approx(plain["embedding_loss"] + 3.0 * with_tail["tail_loss"], rel=1e-5)
    # the hardest 5 gaps weighted towards the largest exceed the plain mean gap
    assert with_tail["tail_loss"] > plain["embedding_loss"]
    only = fit(
        student, batches, config=cfg, hooks=[EmbeddingDistillation(teacher, cosine_weight=0, tail_weight=1)]
    ).rows[-1]
    assert only["embedding_loss"] == pytest.approx(only["tail_loss"], rel=1e-5)


def test_distill_transformer_with_the_tail_term_lowers_it():
    teacher, batches = bert_encoder(), sentence_batches()
    fields = {"tail_weight": 1.0, "tail_power": 3.0}
    first = fit(
        nc.prune_transformer(teacher, batches[0], heads=0.5, ffn=0.5), batches,
        config=TrainConfig(epochs=1, optimizer="adamw", lr=0.0, **QUIET),
        hooks=[EmbeddingDistillation(teacher, cosine_weight=0, tail_weight=1.0, tail_power=3.0)],
    ).rows[-1]["tail_loss"]  # fmt: skip
    student = nc.prune_transformer(teacher, batches[0], heads=0.5, ffn=0.5)
    summary = distill_transformer_(
        student, teacher, batches, example_inputs=batches[0], hidden_weight=0, attention_weight=0,
        epochs=4, lr=3e-3, **fields, **QUIET,
    )  # fmt: skip
    assert summary["final_tail_loss"] < 0.7 * first


@pytest.mark.parametrize(
    "fields, message",
    [({"tail_weight": -1.0}, "tail_weight"), ({"tail_power": 0.5}, "tail_power"), ({"tail_top_k": -2}, "tail_top_k")],
)
def test_bad_tail_settings_are_named(fields, message):
    teacher, batches = bert_encoder(), sentence_batches(count=1)
    with pytest.raises(ConfigError, match=message):
        distill_transformer_(teacher, teacher, batches, epochs=1, **fields, **QUIET)
    with pytest.raises(ConfigError, match=message):
        EmbeddingDistillation(teacher, **fields)


def test_bank_similarity_loss_against_a_direct_computation_and_its_scale():
    from netcompress.distillation.transformer_losses import bank_similarity_loss

    g = torch.Generator().manual_seed(0)
    s, t, bank = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g), torch.randn(7, 6, generator=g)
    rows = [bank[j] / bank[j].norm() for j in range(7)]
    mean = sum(rows) / 7
    rows = [r - mean for r in rows]
    total = 0.0
    for i in range(5):
        e = s[i] / s[i].norm() - t[i] / t[i].norm()
        total += sum(float(e @ r) ** 2 for r in rows)
    expected = total / 35 * 6 / (2 * sum(float(r @ r) for r in rows) / 7)
    assert float(bank_similarity_loss(s, t, bank)) == pytest.approx(expected, rel=1e-5)
    assert float(bank_similarity_loss(2 * t, t, bank)) == pytest.approx(0.0, abs=1e-10)
    # an error spread over all directions costs about the plain mean gap
    t = F.normalize(torch.randn(64, 384, generator=g), dim=1)
    noisy = t + 0.05 * torch.randn(64, 384, generator=g)
    gap = float((1 - F.cosine_similarity(noisy, t, dim=-1)).mean())
    assert float(bank_similarity_loss(noisy, t, torch.randn(4096, 384, generator=g))) == pytest.approx(gap, rel=0.05)


def test_bank_similarity_loss_weighs_errors_along_the_banks_spread():
    from netcompress.distillation.transformer_losses import bank_similarity_loss

    g = torch.Generator().manual_seed(1)
    bank = torch.randn(500, 8, generator=g) * torch.tensor([6.0, 1, 1, 1, 1, 1, 1, 1]) + torch.tensor([0, 0, 0, 0, 0, 0, 0, 9.0])
    t = F.normalize(torch.randn(20, 8, generator=g), dim=1)
    along, across = t.clone(), t.clone()
    along[:, 0] += 0.05  # where the bank's (centred) sentences differ
    across[:, 7] += 0.05  # the bank's common direction: centred away
    gap = lambda s: float((1 - F.cosine_similarity(s, t, dim=-1)).mean())  # noqa: E731
    assert gap(along) == pytest.approx(gap(across), rel=0.5)  # alike for the plain gap
    assert float(bank_similarity_loss(along, t, bank)) > 5 * float(bank_similarity_loss(across, t, bank))
    with pytest.raises(ConfigError, match="bank"):
        bank_similarity_loss(t, t, torch.randn(10, 5))
    with pytest.raises(ConfigError, match="at least 2"):
        bank_similarity_loss(t, t, torch.randn(1, 8))


def test_the_hook_adds_the_bank_term_and_names_a_missing_bank():
    teacher, batches = bert_encoder(), sentence_batches()
    student = nc.prune_transformer(teacher, batches[0], heads=0.5, ffn=0.5)
    cfg = TrainConfig(epochs=1, optimizer="adamw", lr=0.0, **QUIET)
    bank = torch.randn(50, 32, generator=torch.Generator().manual_seed(0))
    plain = fit(student, batches, config=cfg, hooks=[EmbeddingDistillation(teacher)]).rows[-1]
    both = fit(
        student, batches, config=cfg, hooks=[EmbeddingDistillation(teacher, bank_weight=2.0, bank=bank)]
    ).rows[-1]
    assert "bank_loss" not in plain and both["bank_loss"] > 0.0
    assert both["embedding_loss"] == pytest.approx(plain["embedding_loss"] + 2.0 * both["bank_loss"], rel=1e-5)
    with pytest.raises(ConfigError, match="needs bank"):
        EmbeddingDistillation(teacher, bank_weight=1.0)
    with pytest.raises(ConfigError, match="bank_weight"):
        EmbeddingDistillation(teacher, bank_weight=-1.0, bank=bank)
