"""The relational term of transformer distillation (issue 15): KL between the batch's embedding
cosine-similarity rows, student vs teacher (``similarity_kl``, ``similarity_weight``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.distillation import EmbeddingDistillation, distill_transformer_
from netcompress.distillation.transformer_losses import similarity_kl
from netcompress.training import TrainConfig, fit
from tests.tiny_hf import bert_encoder, sentence_batches

transformers = pytest.importorskip("transformers")

QUIET = {"progress": False}


def test_similarity_kl_against_a_direct_computation():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    tau = 0.1
    expected = 0.0
    for i in range(6):
        others = [j for j in range(6) if j != i]
        cs = torch.stack([F.cosine_similarity(s[i], s[j], dim=0) for j in others]) / tau
        ct = torch.stack([F.cosine_similarity(t[i], t[j], dim=0) for j in others]) / tau
        p, q = ct.softmax(0), cs.softmax(0)
        expected += float((p * (p.log() - q.log())).sum()) / 6
    assert float(similarity_kl(s, t, temperature=tau)) == pytest.approx(expected, rel=1e-5)


def test_similarity_kl_is_zero_for_the_same_ranking_geometry_and_positive_otherwise():
    torch.manual_seed(0)
    t = torch.randn(8, 16)
    assert float(similarity_kl(t, t, temperature=0.05)) == pytest.approx(0.0, abs=1e-6)
    # cosine-based: per-row rescaling of the embeddings changes nothing
    scaled = t * torch.rand(8, 1).add(0.5)
    assert float(similarity_kl(scaled, t, temperature=0.05)) == pytest.approx(0.0, abs=1e-5)
    # two rows swapped: the same set of similarities, but sentences 0 and 1 rank the others differently
    swapped = t[[1, 0, 2, 3, 4, 5, 6, 7]]
    assert float(similarity_kl(swapped, t, temperature=0.05)) > 0.1
    # the gradient reaches the student
    s = torch.randn(8, 16, requires_grad=True)
    similarity_kl(s, t, temperature=0.05).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    # batches of fewer than 3 have no "other" sentences to rank: zero
    assert float(similarity_kl(t[:2], t[:2].flip(0), temperature=0.05)) == 0.0


def test_similarity_kl_refuses_mismatched_embeddings():
    with pytest.raises(ConfigError, match="one shape"):
        similarity_kl(torch.randn(4, 3), torch.randn(4, 5), temperature=0.1)


def test_the_hook_adds_the_relational_term_and_reports_it():
    teacher, batches = bert_encoder(), sentence_batches()
    student = nc.prune_transformer(teacher, batches[0], heads=0.5, ffn=0.5)
    cfg = TrainConfig(epochs=1, optimizer="adamw", lr=0.0, **QUIET)  # lr 0: the losses of one fixed student
    plain = fit(student, batches, config=cfg, hooks=[EmbeddingDistillation(teacher)]).rows[-1]
    with_sim = fit(
        student, batches, config=cfg, hooks=[EmbeddingDistillation(teacher, similarity_weight=2.0)]
    ).rows[-1]
    assert "similarity_loss" not in plain and with_sim["similarity_loss"] > 0.0
    assert with_sim["embedding_loss"] == pytest.approx(
        plain["embedding_loss"] + 2.0 * with_sim["similarity_loss"], rel=1e-5
    )
    # the relational term alone is a valid loss
    only = fit(
        student, batches, config=cfg, hooks=[EmbeddingDistillation(teacher, cosine_weight=0, similarity_weight=1)]
    ).rows[-1]
    assert only["embedding_loss"] == pytest.approx(only["similarity_loss"], rel=1e-5)


def test_distill_transformer_with_the_relational_term_lowers_it():
    teacher, batches = bert_encoder(), sentence_batches()
    student = nc.prune_transformer(teacher, batches[0], heads=0.5, ffn=0.5)
    summary = distill_transformer_(
        student, teacher, batches, example_inputs=batches[0], hidden_weight=0, attention_weight=0,
        similarity_weight=1.0, similarity_temperature=0.1, epochs=4, lr=3e-3, **QUIET,
    )  # fmt: skip
    rows = summary  # the summary keeps the last row's term
    assert rows["final_similarity_loss"] is not None
    first = fit(
        nc.prune_transformer(teacher, batches[0], heads=0.5, ffn=0.5), batches,
        config=TrainConfig(epochs=1, optimizer="adamw", lr=0.0, **QUIET),
        hooks=[EmbeddingDistillation(teacher, cosine_weight=0, similarity_weight=1.0, similarity_temperature=0.1)],
    ).rows[-1]["similarity_loss"]  # fmt: skip
    assert rows["final_similarity_loss"] < 0.7 * first


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"similarity_weight": -1.0}, "similarity_weight"),
        ({"similarity_temperature": 0.0}, "similarity_temperature"),
    ],
)
def test_bad_relational_settings_are_named(fields, message):
    teacher, batches = bert_encoder(), sentence_batches(count=1)
    with pytest.raises(ConfigError, match=message):
        distill_transformer_(teacher, teacher, batches, epochs=1, **fields, **QUIET)
    with pytest.raises(ConfigError, match=message):
        EmbeddingDistillation(teacher, **fields)
