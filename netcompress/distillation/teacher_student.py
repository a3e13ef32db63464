"""The ``distill`` verb: train a student against a teacher with ``netcompress.training.fit``.

There is no second training loop here: distillation is a pair of hooks
(:mod:`netcompress.distillation.hooks`) plugged into the one ``fit`` loop, so schedules,
checkpoints, resume and history behave exactly as for plain training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from netcompress.core.errors import ConfigError, NetcompressError
from netcompress.distillation.hooks import FeatureDistillation, SoftTargetDistillation, TeacherForward
from netcompress.training.config import TrainConfig

if TYPE_CHECKING:
    from netcompress.training import History


def _fit():
    try:
        from netcompress.training import fit
    except ImportError as exc:  # the training package is written alongside this one
        raise NetcompressError(
            f"distillation needs netcompress.training.fit, which is missing: {exc}"
        ) from exc
    return fit


def _example_inputs(train_loader: Any) -> Any:
    """One sample from the loader's data set, batched; reading the data set (not iterating the
    loader) leaves the loader's shuffling generator untouched."""
    dataset = getattr(train_loader, "dataset", None)
    try:
        sample = dataset[0][0]
    except Exception as exc:
        raise ConfigError(
            "feature distillation needs an example input: the train loader's dataset cannot be indexed "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return sample.unsqueeze(0)


def distill_with_history(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: Any,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    epochs: int | None = None,
    val_loader: Any = None,
    config: TrainConfig | None = None,
    feature_pairs: Mapping[str, str] | None = None,
    feature_weight: float = 1.0,
    feature_adapter: str = "conv1x1",
    hooks: Sequence[Any] = (),
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> tuple[nn.Module, History]:
    """Like :func:`distill`, and also return ``fit``'s History.

    Rows gain ``kd_soft_loss``, ``kd_hard_loss`` and ``teacher_train_acc`` (and ``feature_loss``
    with ``feature_pairs``).

    Example:
        >>> student, history = distill_with_history(student, teacher, train_loader, epochs=2)
        >>> history.rows[-1]["kd_soft_loss"]
    """
    if student is teacher:
        raise ConfigError("student and teacher are the same module; distil into a separate student")
    cfg = config or TrainConfig()
    if epochs is not None:
        cfg = cfg.replace(epochs=epochs)
    teacher_forward = TeacherForward(teacher)
    all_hooks: list[Any] = [SoftTargetDistillation(teacher_forward, temperature=temperature, alpha=alpha)]
    feature_hook = None
    if feature_pairs:
        feature_hook = FeatureDistillation(
            teacher_forward,
            student,
            pairs=feature_pairs,
            example_inputs=_example_inputs(train_loader),
            weight=feature_weight,
            adapter=feature_adapter,
        )
        # after the soft-target hook, so alpha scales only the hard-label term, not the hint
        all_hooks.append(feature_hook)
    fit = _fit()
    try:
        history = fit(
            student,
            train_loader,
            val_loader=val_loader,
            config=cfg,
            hooks=[*all_hooks, *hooks],
            extra_parameters=tuple(feature_hook.parameters()) if feature_hook else (),
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )
    finally:
        if feature_hook is not None:
            feature_hook.close()
    return student, history


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: Any,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    epochs: int | None = None,
    val_loader: Any = None,
    config: TrainConfig | None = None,
    feature_pairs: Mapping[str, str] | None = None,
    feature_weight: float = 1.0,
    feature_adapter: str = "conv1x1",
    hooks: Sequence[Any] = (),
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> nn.Module:
    """Train ``student`` IN PLACE on soft targets from ``teacher``; return the student.

    Loss per batch: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``
    plus, with ``feature_pairs={student_layer: teacher_layer}``, ``feature_weight`` times the
    hint loss through learned adapters (``feature_adapter``: "conv1x1", "linear", "identity").
    The teacher runs once per batch in eval mode without gradients; it is moved to the
    training device. ``epochs`` overrides ``config.epochs`` (default: ``config.epochs``, or
    ``TrainConfig().epochs`` without a config). Everything else follows ``fit``.

    Example:
        >>> student = nc.distill(student, teacher, train_loader, temperature=4.0, alpha=0.9, epochs=10)
    """
    return distill_with_history(
        student,
        teacher,
        train_loader,
        temperature=temperature,
        alpha=alpha,
        epochs=epochs,
        val_loader=val_loader,
        config=config,
        feature_pairs=feature_pairs,
        feature_weight=feature_weight,
        feature_adapter=feature_adapter,
        hooks=hooks,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
    )[0]
