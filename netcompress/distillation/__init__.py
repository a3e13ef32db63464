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
]
