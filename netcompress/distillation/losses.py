"""Distillation losses: soft targets with a temperature (Hinton et al., 2015).

The soft-target term compares the student's and the teacher's class distributions, both
softened by a temperature ``T``; it is scaled by ``T**2`` so that its gradients keep the same
size as the hard-label term whatever ``T`` is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from netcompress.core.config import check_range
from netcompress.core.errors import ConfigError


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float
) -> torch.Tensor:
    """``T**2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch.

    Example:
        >>> soft_target_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=4.0)
        tensor(0.)
    """
    check_range("temperature", temperature, 1e-6)
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape; both models must predict the same classes"
        )
    if student_logits.dim() < 2 or not student_logits.is_floating_point():
        raise ConfigError(
            f"soft targets need class scores (N, classes, ...) as floating point; the models' main output is "
            f"{str(student_logits.dtype).removeprefix('torch.')} {tuple(student_logits.shape)} (chosen actions or "
            "labels carry no class distribution to match): return the logits, or distill a wrapper that does"
        )
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (temperature**2)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Knowledge-distillation loss: ``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(s, y)``.

    ``p_t = softmax(teacher / T)``, ``p_s = softmax(student / T)``; the KL term is averaged over
    the batch ("batchmean"), the cross-entropy is the usual mean over the batch. ``alpha=1``
    trains on the teacher alone, ``alpha=0`` is plain cross-entropy.

    Example:
        >>> s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
        >>> kd_loss(s, t, y, temperature=4.0, alpha=0.9)
    """
    check_range("alpha", alpha, 0.0, 1.0)
    soft = soft_target_loss(student_logits, teacher_logits, temperature=temperature)
    hard = F.cross_entropy(student_logits, targets)
    return alpha * soft + (1.0 - alpha) * hard
