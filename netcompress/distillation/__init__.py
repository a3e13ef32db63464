"""Knowledge distillation: soft targets with a temperature, and feature (hint) distillation.

Example::

    import netcompress as nc
    student = nc.distill(student, teacher, train_loader, temperature=4.0, alpha=0.9, epochs=10)
"""

from netcompress.distillation import steps as _steps  # noqa: F401  (registers distill/soft_targets)
from netcompress.distillation.hooks import (
    ADAPTERS,
    FeatureDistillation,
    SoftTargetDistillation,
    TeacherForward,
)
from netcompress.distillation.losses import kd_loss, soft_target_loss
from netcompress.distillation.steps import SoftTargetsStepConfig, load_teacher
from netcompress.distillation.teacher_student import distill, distill_with_history

__all__ = [
    "ADAPTERS",
    "FeatureDistillation",
    "SoftTargetDistillation",
    "SoftTargetsStepConfig",
    "TeacherForward",
    "distill",
    "distill_with_history",
    "kd_loss",
    "load_teacher",
    "soft_target_loss",
]
