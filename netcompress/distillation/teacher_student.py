"""Knowledge distillation with soft targets: its config, the method ``distill/soft_targets``
and the ``distill_`` verb (``distill`` is its alias that returns the student).

There is no second training loop here: distillation is a pair of hooks
(:mod:`netcompress.distillation.hooks`) plugged into the one ``fit`` loop, so schedules,
checkpoints, resume and history behave exactly as for plain training.

Example recipe step::

    - {op: distill, method: soft_targets, epochs: 10, temperature: 4.0, alpha: 0.9, teacher: {step: 1}}
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.inputs import map_inputs, split_batch
from netcompress.core.methods import MethodData, Result, apply, register_method
from netcompress.distillation.hooks import (
    ADAPTERS,
    FeatureDistillation,
    SoftTargetDistillation,
    TeacherForward,
)
from netcompress.distillation.teacher_loading import check_teacher_spec, teacher_for_step
from netcompress.training.config import TrainConfig

if TYPE_CHECKING:
    from netcompress.training import History


@dataclasses.dataclass
class SoftTargetsConfig(TrainConfig):
    """Distillation settings: every TrainConfig field plus the KD loss and, in a recipe, the teacher.

    ``teacher`` is a teacher block (see :mod:`netcompress.distillation.teacher_loading`); the
    ``distill_`` verb takes the teacher module itself instead. ``feature_pairs``
    (``{student_layer: teacher_layer}``) adds ``feature_weight`` times the hint loss through
    learned adapters (``feature_adapter``: "conv1x1", "linear", "identity").

    Example:
        >>> SoftTargetsConfig(epochs=10, temperature=4.0, alpha=0.9, teacher={"step": 1})
    """

    temperature: float = 4.0
    alpha: float = 0.9
    teacher: dict[str, Any] | None = None
    feature_pairs: dict[str, str] | None = None
    feature_weight: float = 1.0
    feature_adapter: str = "conv1x1"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("temperature", self.temperature, 1e-6)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("feature_weight", self.feature_weight, 0.0)
        check_choice("feature_adapter", self.feature_adapter, ADAPTERS.names())
        if self.teacher is not None:
            check_teacher_spec(self.teacher)


def _example_inputs(train_loader: Any) -> Any:
    """One sample from the loader's data set, batched; reading the data set (not iterating the
    loader) leaves the loader's shuffling generator untouched."""
    dataset = getattr(train_loader, "dataset", None)
    try:
        sample = split_batch(dataset[0])[0]
    except Exception as exc:
        raise ConfigError(
            "feature distillation needs an example input: the train loader's dataset cannot be indexed "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return map_inputs(sample, lambda t: t.unsqueeze(0))


def _fit_student(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: Any,
    config: SoftTargetsConfig,
    train_cfg: TrainConfig,
    *,
    val_loader: Any,
    hooks: Sequence[Any],
    checkpoint_dir: str | Path | None,
    resume: bool,
) -> History:
    """Train ``student`` in place with the KD hooks through ``fit``; return fit's History."""
    from netcompress.training import fit

    if student is teacher:
        raise ConfigError("student and teacher are the same module; distil into a separate student")
    teacher_forward = TeacherForward(teacher)
    all_hooks: list[Any] = [
        SoftTargetDistillation(teacher_forward, temperature=config.temperature, alpha=config.alpha)
    ]
    feature_hook = None
    if config.feature_pairs:
        feature_hook = FeatureDistillation(
            teacher_forward,
            student,
            pairs=config.feature_pairs,
            example_inputs=_example_inputs(train_loader),
            weight=config.feature_weight,
            adapter=config.feature_adapter,
        )
        # after the soft-target hook, so alpha scales only the hard-label term, not the hint
        all_hooks.append(feature_hook)
    try:
        return fit(
            student,
            train_loader,
            val_loader=val_loader,
            config=train_cfg,
            hooks=[*all_hooks, *hooks],
            extra_parameters=tuple(feature_hook.parameters()) if feature_hook else (),
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )
    finally:
        if feature_hook is not None:
            feature_hook.close()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@register_method("distill", "soft_targets", config=SoftTargetsConfig)
def soft_targets(model: nn.Module, config: SoftTargetsConfig, data: MethodData) -> Result:
    """Knowledge distillation with soft targets (temperature, alpha) from a teacher model.

    The teacher is ``config.teacher`` (a teacher block) or else ``data.extras["teacher"]`` (a
    module). ``data.extras`` may also carry ``hooks`` (more ``fit`` hooks), ``checkpoint_dir``
    and ``resume``. Rows gain ``kd_soft_loss``, ``kd_hard_loss`` and ``teacher_train_acc`` (and
    ``feature_loss`` with ``feature_pairs``). The student trains in place.
    """
    if config.teacher is not None:
        teacher = teacher_for_step(config.teacher, data)
    elif "teacher" in data.extras:
        teacher = data.extras["teacher"]
    else:
        raise ConfigError(
            "distill/soft_targets needs a teacher: set 'teacher:' in the step or data.extras['teacher']"
        )
    train_cfg = config.train_config().replace(device=data.device, progress=config.progress and data.progress)
    history = _fit_student(
        model,
        teacher,
        data.train_loader,
        config,
        train_cfg,
        val_loader=data.val_loader,
        hooks=list(data.extras.get("hooks", ())),
        checkpoint_dir=data.extras.get("checkpoint_dir"),
        resume=bool(data.extras.get("resume", False)),
    )
    rows = list(history.rows)
    val_accs = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
    summary = {
        "method": "soft_targets",
        "temperature": config.temperature,
        "alpha": config.alpha,
        "epochs": train_cfg.epochs,
        "teacher_params": _params(teacher),
        "student_params": _params(model),
        "final_train_acc": rows[-1].get("train_acc") if rows else None,
        "final_val_acc": rows[-1].get("val_acc") if rows else None,
        "best_val_acc": max(val_accs) if val_accs else None,
        "teacher_train_acc": rows[-1].get("teacher_train_acc") if rows else None,
    }
    metrics_path = data.out_dir / "teacher_metrics.json" if data.out_dir is not None else None
    if metrics_path is not None and metrics_path.exists():
        summary["teacher_val_acc"] = json.loads(metrics_path.read_text())["accuracy"]
    return Result(model=model, summary=summary, history=rows)


def distill_(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: Any,
    *,
    val_loader: Any = None,
    config: TrainConfig | None = None,
    hooks: Sequence[Any] = (),
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """Train ``student`` IN PLACE on soft targets from ``teacher``; return the summary.

    Loss per batch: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``
    plus, with ``feature_pairs={student_layer: teacher_layer}``, ``feature_weight`` times the
    hint loss through learned adapters. ``fields`` are :class:`SoftTargetsConfig` fields
    (``temperature``, ``alpha``, ``epochs``, ``lr``, ...); they override ``config`` (a
    SoftTargetsConfig, or a TrainConfig for the training fields). The teacher runs once per
    batch in eval mode without gradients, on the training device. Everything else follows ``fit``.
    The per-epoch history is ``netcompress.core.methods.apply(student, cfg, data).history``.

    Example:
        >>> summary = nc.distill_(student, teacher, train_loader, temperature=4.0, alpha=0.9, epochs=10)
        >>> summary["final_train_acc"]
    """
    cfg = distill_config(config, fields)
    data = MethodData(
        train_loader=train_loader,
        val_loader=val_loader,
        device=cfg.device,
        extras={"teacher": teacher, "hooks": list(hooks), "checkpoint_dir": checkpoint_dir, "resume": resume},
    )
    return apply(student, cfg, data).summary


def distill_config(config: TrainConfig | None, fields: Mapping[str, Any]) -> SoftTargetsConfig:
    """The SoftTargetsConfig of ``config`` (its TrainConfig fields when it is a plain TrainConfig)
    with ``fields`` on top.

    Example:
        >>> distill_config(TrainConfig(epochs=2), {"alpha": 0.5}).alpha
        0.5
    """
    if isinstance(config, SoftTargetsConfig):
        base = config.to_dict()
    elif config is not None:
        base = config.train_config().to_dict()
    else:
        base = {}
    return SoftTargetsConfig.from_dict({**base, **fields}, where="distill")


def distill(student: nn.Module, teacher: nn.Module, train_loader: Any, **kwargs: Any) -> nn.Module:
    """Alias of :func:`distill_` (the student trains in place) that returns the student.

    Example:
        >>> student = nc.distill(student, teacher, train_loader, temperature=4.0, alpha=0.9, epochs=10)
    """
    distill_(student, teacher, train_loader, **kwargs)
    return student


distill.__signature__ = inspect.signature(distill_).replace(return_annotation="nn.Module")  # type: ignore[attr-defined]
