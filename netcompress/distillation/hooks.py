"""Training hooks that turn :func:`netcompress.training.fit` into teacher/student training.

``SoftTargetDistillation`` replaces the loss by the soft-target loss against a teacher;
``FeatureDistillation`` adds a hint loss between intermediate features (FitNets, Romero et
al., 2015) through small learned adapters. Both share one :class:`TeacherForward`, so the
teacher runs once per batch however many hooks read its outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import call_model, input_tensors, move_inputs, output_tensor
from netcompress.core.model_check import check_model
from netcompress.core.registry import Registry
from netcompress.distillation.losses import soft_target_loss
from netcompress.evaluation.harness import eval_mode


def _call(model: nn.Module, inputs: Any) -> Any:
    return call_model(model, inputs)


def _device_of(inputs: Any) -> torch.device:
    return input_tensors(inputs)[0].device


def _logits(out: Any, who: str) -> torch.Tensor:
    # a Hugging Face ModelOutput: its logits; a tuple: its first item, as fit's default loss reads it
    # (MONAI's ViT returns (logits, hidden states), TabNet (logits, sparsity loss))
    if isinstance(out, (Mapping, tuple, list)):
        out = output_tensor(out)
    if not isinstance(out, torch.Tensor):
        raise UnsupportedModelError(
            f"{who} returned {type(out).__name__}; distillation needs a logits tensor"
        )
    return out


class TeacherForward:
    """Runs the teacher once per batch, in eval mode and under ``torch.no_grad``.

    The result is cached for the batch's ``inputs`` object (identity, not value), so several
    hooks reading the teacher on one batch cost one forward; ``clear()`` (called by the hooks
    after every optimiser step) drops it. The teacher is moved to the inputs' device on first
    use (in place, like ``Module.to``); its train/eval flag is restored after each call.
    ``calls`` counts real forwards.

    Example:
        >>> run = TeacherForward(teacher)
        >>> logits = run(images)  # no grad, eval mode
    """

    def __init__(self, teacher: nn.Module) -> None:
        check_model(teacher, where="distillation", argument="teacher")
        self.teacher = teacher
        self.calls = 0
        self._key: Any = None
        self._out: Any = None

    def __call__(self, inputs: Any) -> Any:
        if self._key is not None and self._key is inputs:
            return self._out
        device = _device_of(inputs)
        param = next(self.teacher.parameters(), None)
        if param is not None and param.device != device:
            self.teacher.to(device)
        with eval_mode(self.teacher), torch.no_grad():
            out = _call(self.teacher, inputs)
        self.calls += 1
        self._key, self._out = inputs, out
        return out

    def clear(self) -> None:
        self._key = self._out = None

    def __getstate__(self) -> dict[str, Any]:
        # the cached batch is transient and may hold non-leaf tensors that refuse pickling
        return {**self.__dict__, "_key": None, "_out": None}


def _as_teacher_forward(teacher: nn.Module | TeacherForward) -> TeacherForward:
    return teacher if isinstance(teacher, TeacherForward) else TeacherForward(teacher)


class SoftTargetDistillation:
    """Hook: loss = ``alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * fit_loss``.

    The hard-label term is the loss ``fit`` already computed (cross-entropy, with its label
    smoothing if configured), so with ``alpha=0`` training is exactly plain ``fit``.
    ``epoch_end`` reports the epoch's mean soft and hard terms and the teacher's accuracy on
    the training batches (``kd_soft_loss``, ``kd_hard_loss``, ``teacher_train_acc``).

    Example:
        >>> hook = SoftTargetDistillation(teacher, temperature=4.0, alpha=0.9)
        >>> fit(student, train_loader, hooks=[hook])
    """

    def __init__(self, teacher: nn.Module | TeacherForward, *, temperature: float = 4.0, alpha: float = 0.9):
        check_range("temperature", temperature, 1e-6)
        check_range("alpha", alpha, 0.0, 1.0)
        self.teacher_forward = _as_teacher_forward(teacher)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.epoch_start(None, 0)

    def loss(self, model: nn.Module, inputs: Any, outputs: Any, targets: torch.Tensor, loss: torch.Tensor):
        student = _logits(outputs, "student")
        teacher = _logits(self.teacher_forward(inputs), "teacher")
        soft = soft_target_loss(student, teacher, temperature=self.temperature)
        # accumulate as tensors: one host sync per epoch instead of per batch
        self._soft_sum = self._soft_sum + soft.detach()
        self._hard_sum = self._hard_sum + loss.detach()
        self._batches += 1
        if targets is not None and targets.dim() == 1:
            self._teacher_correct = self._teacher_correct + (teacher.argmax(1) == targets).sum()
            self._samples += targets.numel()
        return self.alpha * soft + (1.0 - self.alpha) * loss

    def after_step(self, model: nn.Module) -> None:
        self.teacher_forward.clear()

    def epoch_start(self, model: nn.Module | None, epoch: int) -> None:
        self._soft_sum = self._hard_sum = self._teacher_correct = torch.zeros(())
        self._batches = self._samples = 0

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        if not self._batches:
            return {}
        row = {
            "kd_soft_loss": float(self._soft_sum) / self._batches,
            "kd_hard_loss": float(self._hard_sum) / self._batches,
        }
        if self._samples:
            row["teacher_train_acc"] = float(self._teacher_correct) / self._samples
        return row


class _FeatureCapture:
    """Forward hook keeping a layer's latest output (module-level so models stay picklable)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.value = output

    def __getstate__(self) -> dict[str, Any]:
        return {"value": None}


AdapterBuilder = Callable[[torch.Size, torch.Size], nn.Module]
ADAPTERS: Registry[AdapterBuilder] = Registry("feature adapter")


@ADAPTERS.register("conv1x1")
def _conv1x1(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    convs = {3: nn.Conv1d, 4: nn.Conv2d}
    if len(student_shape) not in convs:
        raise ConfigError(
            f"adapter 'conv1x1' needs (N, C, L) or (N, C, H, W) features, got {tuple(student_shape)}; "
            "use adapter='linear' for (N, C) features"
        )
    return convs[len(student_shape)](student_shape[1], teacher_shape[1], kernel_size=1, bias=False)


@ADAPTERS.register("linear")
def _linear(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    if len(student_shape) != 2:
        raise ConfigError(f"adapter 'linear' needs (N, C) features, got {tuple(student_shape)}")
    return nn.Linear(student_shape[1], teacher_shape[1])


@ADAPTERS.register("identity")
def _identity(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    if student_shape[1] != teacher_shape[1]:
        raise ConfigError(
            f"adapter 'identity' needs equal channels, got student {student_shape[1]} "
            f"vs teacher {teacher_shape[1]}"
        )
    return nn.Identity()


def _match_spatial(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool both features to their common (smallest) spatial size."""
    if student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    size = tuple(min(a, b) for a, b in zip(student.shape[2:], teacher.shape[2:]))
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d}.get(len(size))
    if pool is None:
        raise UnsupportedModelError(f"cannot match features of shapes {student.shape} and {teacher.shape}")
    return pool(student, size), pool(teacher, size)


class FeatureDistillation:
    """Hook adding ``weight * sum_pairs MSE(adapter(student_feature), teacher_feature)``.

    ``pairs`` maps student layer names to teacher layer names; forward hooks capture their
    outputs. Each pair gets a learned adapter (``"conv1x1"``, ``"linear"`` or ``"identity"``)
    sized by one probe forward of ``example_inputs``; pass :meth:`parameters` to ``fit`` as
    ``extra_parameters`` so the adapters train with the student. Features of different
    spatial size are average-pooled to the smaller one. Call :meth:`close` afterwards to
    remove the forward hooks from both models.

    Example:
        >>> hint = FeatureDistillation(teacher, student, pairs={"features.3": "layer2"},
        ...                            example_inputs=x[:1], weight=1.0)
        >>> fit(student, loader, hooks=[hint], extra_parameters=hint.parameters())
        >>> hint.close()
    """

    def __init__(
        self,
        teacher: nn.Module | TeacherForward,
        student: nn.Module,
        *,
        pairs: Mapping[str, str],
        example_inputs: Any,
        weight: float = 1.0,
        adapter: str = "conv1x1",
    ) -> None:
        if not pairs:
            raise ConfigError("FeatureDistillation needs at least one student_layer: teacher_layer pair")
        check_range("weight", weight, 0.0)
        check_choice("adapter", adapter, ADAPTERS.names())
        self.teacher_forward = _as_teacher_forward(teacher)
        self.pairs = dict(pairs)
        self.weight = float(weight)
        self._handles: list[Any] = []
        self._student_caps: list[_FeatureCapture] = []
        self._teacher_caps: list[_FeatureCapture] = []
        teacher_model = self.teacher_forward.teacher
        for s_name, t_name in self.pairs.items():
            for model, name, caps, who in (
                (student, s_name, self._student_caps, "student"),
                (teacher_model, t_name, self._teacher_caps, "teacher"),
            ):
                try:
                    layer = model.get_submodule(name)
                except AttributeError:
                    raise ConfigError(
                        f"{who} has no layer {name!r} (feature pair {s_name!r}: {t_name!r})"
                    ) from None
                cap = _FeatureCapture()
                self._handles.append(layer.register_forward_hook(cap))
                caps.append(cap)
        s_shapes, t_shapes = self._probe(student, teacher_model, example_inputs)
        builder = ADAPTERS.get(adapter)
        self.adapters = nn.ModuleList(builder(s, t) for s, t in zip(s_shapes, t_shapes))
        device = next(student.parameters()).device
        self.adapters.to(device)
        self.epoch_start(None, 0)

    def _probe(self, student: nn.Module, teacher: nn.Module, example_inputs: Any):
        shapes = []
        for model, caps in ((student, self._student_caps), (teacher, self._teacher_caps)):
            param = next(model.parameters(), None)
            inputs = example_inputs
            if param is not None:
                inputs = move_inputs(example_inputs, param.device)
            with eval_mode(model), torch.no_grad():
                _call(model, inputs)
            shapes.append([c.value.shape for c in caps])
            for c in caps:
                c.value = None
        return shapes

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.adapters.parameters()

    def loss(self, model: nn.Module, inputs: Any, outputs: Any, targets: torch.Tensor, loss: torch.Tensor):
        self.teacher_forward(inputs)  # fills the teacher captures (or reuses this batch's run)
        total = loss.new_zeros(())
        for adapter, s_cap, t_cap in zip(self.adapters, self._student_caps, self._teacher_caps):
            student_feat = s_cap.value
            if next(adapter.parameters(), student_feat).device != student_feat.device:
                adapter.to(student_feat.device)
            s_feat, t_feat = _match_spatial(adapter(student_feat), t_cap.value)
            total = total + F.mse_loss(s_feat, t_feat.detach())
        self._feature_sum = self._feature_sum + total.detach()
        self._batches += 1
        return loss + self.weight * total

    def after_step(self, model: nn.Module) -> None:
        self.teacher_forward.clear()

    def epoch_start(self, model: nn.Module | None, epoch: int) -> None:
        self._feature_sum = torch.zeros(())
        self._batches = 0

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {"feature_loss": float(self._feature_sum) / self._batches} if self._batches else {}

    def close(self) -> None:
        """Remove the forward hooks from the student and the teacher."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
