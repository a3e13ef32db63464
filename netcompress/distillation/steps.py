"""Recipe step ``distill/soft_targets``: train the current model as a student of a teacher.

The teacher comes from the step's ``teacher:`` block (a registered model name plus kwargs and
an optional checkpoint) or, when that is absent, from ``ctx.extras["teacher"]``::

    - op: distill
      method: soft_targets
      teacher: {model: resnet18, kwargs: {num_classes: 11}, checkpoint: runs/teacher/model.pt}
      temperature: 4.0
      alpha: 0.9
      epochs: 10
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.core.io import load_checkpoint
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.distillation.hooks import ADAPTERS
from netcompress.distillation.teacher_student import distill_with_history
from netcompress.training.config import TrainConfig

TEACHER_KEYS = ("model", "kwargs", "checkpoint", "trust", "train", "step")


@dataclasses.dataclass
class SoftTargetsStepConfig(TrainConfig):
    """Distillation settings: every TrainConfig field plus the teacher and the KD loss."""

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
            if not isinstance(self.teacher, Mapping):
                raise ConfigError(f"teacher must be a mapping with keys {TEACHER_KEYS}, got {self.teacher!r}")
            for key in self.teacher:
                if key not in TEACHER_KEYS:
                    raise ConfigError(f"unknown key {key!r} in teacher; accepted: {', '.join(TEACHER_KEYS)}")
            if not {"model", "checkpoint", "step"} & set(self.teacher):
                raise ConfigError(
                    "teacher needs 'model' (a registered name), 'checkpoint' (a path) "
                    "or 'step' (the model after that step of this run, e.g. step: 1)"
                )

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{name: getattr(self, name) for name in TrainConfig.field_names()})


def _state_dict_of(obj: Any) -> Mapping[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model_state", "model"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    return None


def load_teacher(spec: Mapping[str, Any], *, num_classes: int) -> nn.Module:
    """Build a teacher from ``{model: name | {name: ..., **kwargs}, kwargs: {...}, checkpoint: path}``.

    A checkpoint may hold a state dict (plain or under ``state_dict``/``model_state_dict``/``model``),
    which needs ``model``; a whole pickled model, ``{"model": module}``, loads only with ``trust: true``
    (unpickling runs code) or when netcompress wrote and signed it on this machine.
    ``num_classes`` defaults to the data set's.

    Example:
        >>> load_teacher({"model": "resnet18", "checkpoint": "teacher.pt"}, num_classes=11)
    """
    teacher: nn.Module | None = None
    if "model" in spec:
        from netcompress import models

        model_spec = spec["model"]
        kwargs = dict(spec.get("kwargs") or {})
        if isinstance(model_spec, Mapping):
            kwargs = {**{k: v for k, v in model_spec.items() if k != "name"}, **kwargs}
            model_spec = model_spec.get("name")
        kwargs.setdefault("num_classes", num_classes)
        teacher = models.create(model_spec, **kwargs)
    if "checkpoint" in spec:
        path = spec["checkpoint"]
        obj = load_checkpoint(path, trust=bool(spec.get("trust", False)))
        if isinstance(obj, Mapping) and isinstance(obj.get("model"), nn.Module):
            obj = obj["model"]
        if isinstance(obj, nn.Module):
            teacher = obj
        else:
            state = _state_dict_of(obj)
            if state is None:
                raise CheckpointError(f"teacher checkpoint {path} holds neither a model nor a state dict")
            if teacher is None:
                raise ConfigError(
                    f"teacher checkpoint {path} is a state dict: give teacher.model to build into"
                )
            try:
                teacher.load_state_dict(state)
            except RuntimeError as exc:
                raise CheckpointError(
                    f"teacher checkpoint {path} does not fit teacher.model: {exc}"
                ) from None
    assert teacher is not None  # __post_init__ guarantees model or checkpoint
    return teacher


def _teacher_for_step(spec: Mapping[str, Any], ctx: MethodData) -> nn.Module:
    """Load the teacher; with ``train:`` and no checkpoint, train it first on the step's data.

    A teacher trained here is saved as ``teacher.pt`` in the step folder and evaluated into
    ``teacher_metrics.json``, so a resumed run reuses it and the report can quote its accuracy.
    """
    if "step" in spec:
        return _teacher_from_step(int(spec["step"]), ctx)
    if "train" not in spec or "checkpoint" in spec:
        return load_teacher(spec, num_classes=ctx.num_classes)
    from netcompress.core.io import atomic_torch_save, atomic_write_json
    from netcompress.evaluation import evaluate
    from netcompress.training import TrainConfig, fit

    cached = ctx.out_dir / "teacher.pt"
    if cached.exists():
        return load_teacher({"checkpoint": str(cached)}, num_classes=ctx.num_classes)
    teacher = load_teacher({k: v for k, v in spec.items() if k != "train"}, num_classes=ctx.num_classes)
    train_cfg = TrainConfig.from_dict(spec["train"] or {}, where="teacher.train")
    train_cfg = train_cfg.replace(device=ctx.device, progress=train_cfg.progress and ctx.progress)
    history = fit(teacher, ctx.train_loader, val_loader=ctx.val_loader, config=train_cfg)
    atomic_write_json(ctx.out_dir / "teacher_history.json", history.rows)
    atomic_write_json(ctx.out_dir / "teacher_metrics.json", evaluate(teacher, ctx.val_loader))
    atomic_torch_save(teacher, cached, sign=True)
    return teacher


def _teacher_from_step(step: int, ctx: MethodData) -> nn.Module:
    """The model as it was after step ``step`` (1-based) of this run: pruning + KD in one recipe."""
    path = ctx.extras.get("step_models", {}).get(step)
    if path is None:
        raise ConfigError(f"teacher: step {step} has no finished model in this run (use an earlier step)")
    return load_teacher({"checkpoint": str(path)}, num_classes=ctx.num_classes)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@register_method("distill", "soft_targets", config=SoftTargetsStepConfig)
def _soft_targets_step(model: nn.Module, config: SoftTargetsStepConfig, ctx: MethodData) -> Result:
    """Knowledge distillation with soft targets (temperature, alpha) from a teacher model."""
    if config.teacher is not None:
        teacher = _teacher_for_step(config.teacher, ctx)
    elif "teacher" in ctx.extras:
        teacher = ctx.extras["teacher"]
    else:
        raise ConfigError(
            "distill/soft_targets needs a teacher: set 'teacher:' in the step or ctx.extras['teacher']"
        )
    train_cfg = config.train_config().replace(device=ctx.device, progress=config.progress and ctx.progress)
    student, history = distill_with_history(
        model,
        teacher,
        ctx.train_loader,
        temperature=config.temperature,
        alpha=config.alpha,
        val_loader=ctx.val_loader,
        config=train_cfg,
        feature_pairs=config.feature_pairs,
        feature_weight=config.feature_weight,
        feature_adapter=config.feature_adapter,
    )
    rows = list(history.rows)
    val_accs = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
    summary = {
        "method": "soft_targets",
        "temperature": config.temperature,
        "alpha": config.alpha,
        "epochs": train_cfg.epochs,
        "teacher_params": _params(teacher),
        "student_params": _params(student),
        "final_train_acc": rows[-1].get("train_acc") if rows else None,
        "final_val_acc": rows[-1].get("val_acc") if rows else None,
        "best_val_acc": max(val_accs) if val_accs else None,
        "teacher_train_acc": rows[-1].get("teacher_train_acc") if rows else None,
    }
    metrics_path = ctx.out_dir / "teacher_metrics.json"
    if metrics_path.exists():
        import json

        summary["teacher_val_acc"] = json.loads(metrics_path.read_text())["accuracy"]
    return Result(model=student, summary=summary, history=rows)
