"""Knowledge distillation: soft targets with a temperature, and feature (hint) distillation.

Example::

    import netcompress as nc
    summary = nc.distill_(student, teacher, train_loader, temperature=4.0, alpha=0.9, epochs=10)
    student = nc.distill(student, teacher, train_loader, epochs=10)   # alias: returns the student
"""

from netcompress.distillation.hooks import (
    ADAPTERS,
    FeatureDistillation,
    SoftTargetDistillation,
    TeacherForward,
)
from netcompress.distillation.losses import kd_loss, soft_target_loss
from netcompress.distillation.teacher_loading import TEACHER_KEYS, load_teacher
from netcompress.distillation.teacher_student import SoftTargetsConfig, distill, distill_
from netcompress.distillation.transformer_distillation import (
    EmbeddingDistillConfig,
    TransformerDistillConfig,
    distill_embeddings_,
    distill_transformer_,
)
from netcompress.distillation.transformer_hooks import EmbeddingDistillation, TransformerDistillation
from netcompress.distillation.transformer_losses import attention_kl, uniform_layer_map

__all__ = [
    "ADAPTERS",
    "TEACHER_KEYS",
    "FeatureDistillation",
    "SoftTargetDistillation",
    "SoftTargetsConfig",
    "TeacherForward",
    "distill",
    "distill_",
    "kd_loss",
    "load_teacher",
    "soft_target_loss",
    "EmbeddingDistillConfig",
    "EmbeddingDistillation",
    "TransformerDistillConfig",
    "TransformerDistillation",
    "attention_kl",
    "distill_embeddings_",
    "distill_transformer_",
    "uniform_layer_map",
]
