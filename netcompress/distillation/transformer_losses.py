"""Losses of transformer distillation: layer mapping, hidden-state MSE, attention/relation KL, embeddings.

- TinyBERT (Jiao et al., 2020): student layer ``i`` learns teacher layer ``g(i)``'s hidden states through
  a learned projection (widths may differ) and its attention maps;
- MiniLM (Wang et al., 2020): KL divergence between attention distributions and between value relations
  ``softmax(V V^T / sqrt(d))``;
- sentence embeddings: cosine and/or MSE between mean-pooled token states.

Padding tokens (``valid`` False) count neither as queries nor in the means.

Example:
    >>> uniform_layer_map(3, 6)
    [2, 4, 6]
    >>> attention_kl(scores, scores, valid=None)
    tensor(0.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from netcompress.core.errors import ConfigError
from netcompress.evaluation.embeddings import mean_pool


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (1-based) of each student layer: ``ceil(i * teacher / student)``.

    Example:
        >>> uniform_layer_map(4, 6)
        [2, 3, 5, 6]
    """
    return [math.ceil(i * teacher_layers / student_layers) for i in range(1, student_layers + 1)]


def check_layer_map(layer_map: Sequence[int] | None, student_layers: int, teacher_layers: int) -> list[int]:
    """``layer_map`` checked against the layer counts (``None``: :func:`uniform_layer_map`)."""
    if layer_map is None:
        return uniform_layer_map(student_layers, teacher_layers)
    if len(layer_map) != student_layers:
        raise ConfigError(
            f"layer_map has {len(layer_map)} entries but the student has {student_layers} layers "
            "(one teacher layer, 1-based, per student layer)"
        )
    for i, t in enumerate(layer_map):
        if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= teacher_layers:
            raise ConfigError(
                f"layer_map[{i}]={t!r} is out of range: the teacher has {teacher_layers} layers (1..{teacher_layers})"
            )
    return list(layer_map)


def masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (N, L) over the ``valid`` (N, L) positions (all when None)."""
    if valid is None:
        return values.mean()
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def _heads_mean_log(log_probs: torch.Tensor) -> torch.Tensor:
    """log of the head-averaged distribution: (N, H, L, S) -> (N, 1, L, S)."""
    return torch.logsumexp(log_probs, dim=1, keepdim=True) - math.log(log_probs.shape[1])


def attention_kl(
    student_scores: torch.Tensor, teacher_scores: torch.Tensor, valid: torch.Tensor | None
) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` per query row, averaged over heads and valid rows.

    Scores are (N, H, L, S) and already masked. With different head counts (a head-pruned student) both
    sides are compared as head-averaged distributions.
    """
    if (
        student_scores.shape[0] != teacher_scores.shape[0]
        or student_scores.shape[2:] != teacher_scores.shape[2:]
    ):
        raise ConfigError(
            f"attention maps differ in shape: student {tuple(student_scores.shape)} vs teacher "
            f"{tuple(teacher_scores.shape)}"
        )
    log_s = F.log_softmax(student_scores.float(), dim=-1)
    log_t = F.log_softmax(teacher_scores.float(), dim=-1)
    if log_s.shape[1] != log_t.shape[1]:
        log_s, log_t = _heads_mean_log(log_s), _heads_mean_log(log_t)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean(1)  # (N, L)
    return masked_mean(kl, valid)


def relation_scores(
    values: torch.Tensor, heads: int, valid: torch.Tensor | None, *, who: str
) -> torch.Tensor:
    """MiniLM value relation scores ``V_r V_r^T / sqrt(d_r)`` over ``heads`` relation heads: (N, heads, S, S)."""
    n, s, width = values.shape
    if width % heads:
        raise ConfigError(f"relation_heads={heads} does not divide the {who}'s value width {width}")
    v = values.float().view(n, s, heads, width // heads).transpose(1, 2)
    scores = v @ v.transpose(-2, -1) / math.sqrt(width // heads)
    if valid is not None:
        scores = scores.masked_fill(~valid.bool().view(n, 1, 1, s), torch.finfo(scores.dtype).min)
    return scores


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error per token (averaged over channels), averaged over the valid tokens."""
    if student.shape != teacher.shape:
        raise ConfigError(f"hidden states differ in shape: {tuple(student.shape)} vs {tuple(teacher.shape)}")
    return masked_mean((student.float() - teacher.float()).pow(2).mean(-1), valid)


def sentence_embedding(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pool: str) -> torch.Tensor:
    """(N, D) sentence embeddings: (N, D) outputs as they are, (N, L, D) token states mean- or CLS-pooled."""
    if hidden.dim() == 2:
        return hidden
    if hidden.dim() != 3:
        raise ConfigError(
            f"embedding distillation needs (N, D) or (N, L, D) outputs, got {tuple(hidden.shape)}"
        )
    return hidden[:, 0] if pool == "cls" else mean_pool(hidden, attention_mask)


def embedding_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, cosine_weight: float, mse_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``cosine_weight * mean(1 - cos) + mse_weight * MSE``, the mean cosine) of (N, D) embeddings."""
    if student.shape != teacher.shape:
        raise ConfigError(
            f"student embeddings {tuple(student.shape)} and teacher embeddings {tuple(teacher.shape)} differ "
            "(hidden-width pruning changes the embedding width; distil hidden states with distill/transformer "
            "and a projection instead)"
        )
    s, t = student.float(), teacher.float()
    cosine = F.cosine_similarity(s, t, dim=-1)
    loss = cosine_weight * (1.0 - cosine).mean()
    if mse_weight:
        loss = loss + mse_weight * F.mse_loss(s, t)
    return loss, cosine.mean()


def _check_pair(loss: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """``loss`` compares (N, D) student and teacher embeddings row by row: refuse anything else, naming the shapes."""
    if student.shape != teacher.shape or student.dim() != 2:
        raise ConfigError(
            f"{loss} needs (N, D) embeddings of one shape, got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def similarity_kl(student: torch.Tensor, teacher: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Relational loss on a batch's (N, D) embeddings: how each sentence ranks the OTHER sentences.

    Row ``i`` of each side is ``softmax_j(cos(e_i, e_j) / temperature)`` over ``j != i``; the loss is
    ``KL(teacher row || student row)`` averaged over rows. A small temperature weights the closest sentences
    most, which is what nearest-neighbour agreement measures. Zero for batches of fewer than 3.

    Example:
        >>> e = torch.randn(8, 4)
        >>> float(similarity_kl(e, e, temperature=0.05))
        0.0
    """
    _check_pair("similarity_kl", student, teacher)
    n = student.shape[0]
    if n < 3:
        return student.new_zeros(()).float()
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)

    def log_rows(e: torch.Tensor) -> torch.Tensor:
        e = F.normalize(e.float(), dim=-1)
        sims = (e @ e.T)[off].view(n, n - 1) / temperature
        return F.log_softmax(sims, dim=-1)

    log_s, log_t = log_rows(student), log_rows(teacher)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def tail_cosine_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, power: float = 2.0, top_k: int = 0
) -> torch.Tensor:
    """A loss on the batch's WORST sentences: the gaps ``d_i = 1 - cos(s_i, t_i)`` weighted towards the largest.

    ``top_k > 0`` keeps only the ``k`` largest gaps of the batch (the hardest ``k`` sentences). Among the
    kept gaps each sentence is weighted by ``w_i = d_i^(power-1) / mean(d^(power-1))`` (detached, mean 1),
    so the value is ``mean(d^power) / mean(d^(power-1))`` and its gradient is that of ``mean(d^power)``
    rescaled to the plain ``mean(1 - cos)``'s size: as the student improves the term does not fade, it only
    shifts the effort to the sentences furthest from the teacher. ``power=1`` and ``top_k=0`` is the plain
    mean gap. Zero when every embedding points where the teacher's does.

    Example:
        >>> t = torch.randn(8, 4)
        >>> float(tail_cosine_loss(t, t, power=3.0))
        0.0
    """
    _check_pair("tail_cosine_loss", student, teacher)
    if not power >= 1:
        raise ConfigError(f"tail power must be >= 1 (1 = the plain mean gap), got {power!r}")
    if top_k < 0:
        raise ConfigError(f"tail top_k must be >= 0 (0 = every sentence), got {top_k!r}")
    gaps = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    if 0 < top_k < gaps.shape[0]:
        gaps = gaps.topk(top_k).values
    if power == 1:
        return gaps.mean()
    weights = gaps.detach().clamp_min(0.0).pow(power - 1)
    weights = weights / weights.mean().clamp_min(torch.finfo(weights.dtype).tiny)
    return (weights * gaps).mean()


def bank_similarity_loss(student: torch.Tensor, teacher: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The error of each sentence's similarities to a BANK of teacher embeddings: ``e_i^T C e_i``.

    ``e_i = s_i/|s_i| - t_i/|t_i|`` and ``C`` the covariance of the bank's unit rows (rows normalised, then
    centred): the mean over bank rows ``b_j`` of ``(e_i . b_j)^2``, i.e. how far the student's cosine
    similarities to the bank move, first order. An error along the directions that separate the teacher's
    sentences costs more than one across them (the plain gap ``1 - cos`` weighs both alike). Scaled by
    ``D / (2 mean |b_j|^2)`` so that an error spread evenly over all ``D`` directions gives about the plain mean
    gap. Zero when every embedding points where the teacher's does.

    Example:
        >>> t, bank = torch.randn(8, 4), torch.randn(100, 4)
        >>> float(bank_similarity_loss(t, t, bank))
        0.0
    """
    if student.shape != teacher.shape or student.dim() != 2 or bank.dim() != 2 or bank.shape[1] != student.shape[1]:
        raise ConfigError(
            f"bank_similarity_loss needs (N, D) embeddings of one shape and an (M, D) bank, got "
            f"{tuple(student.shape)}, {tuple(teacher.shape)} and bank {tuple(bank.shape)}"
        )
    if bank.shape[0] < 2:
        raise ConfigError(f"the similarity bank needs at least 2 rows (it is centred), got {bank.shape[0]}")
    rows = F.normalize(bank.detach().float(), dim=-1)
    rows = rows - rows.mean(0)
    error = F.normalize(student.float(), dim=-1) - F.normalize(teacher.float(), dim=-1)
    scale = student.shape[1] / (2.0 * rows.pow(2).sum(-1).mean().clamp_min(1e-12))
    return (error @ rows.T).pow(2).mean() * scale
