"""Issue 18, session 15: the fine-tune RECIPE a pruned model gets within the shared budget.

Every pruning row gets ``--finetune-epochs`` epochs on the same data; what those epochs do is a recipe
(``--finetune-recipe NAME``, a :class:`PruningBenchConfig` field, so it enters the rows' cache key; ``default``
is the recipe every earlier row had and leaves the key unchanged). A recipe may change the optimiser's
settings (lr, schedule, warm-up, label smoothing, weight decay), recalibrate BatchNorm on training batches
before training, and add distillation from the unpruned model: logit KD (``SoftTargetDistillation``) and/or a
hint loss on the last conv block's output (``FeatureDistillation``, a learned 1x1 adapter, MSE). Applied by
``pruning.run_method`` to a row's final fine-tune only, the same recipe for every row of a run.

The recipes were chosen on the 1,000-image validation split by ``benchmarks/finetune_probe.py``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from netcompress.core import ConfigError, Registry, check_range
from netcompress.distillation import FeatureDistillation, SoftTargetDistillation
from netcompress.distillation.hooks import TeacherForward
from netcompress.pruning import recalibrate_bn
from netcompress.training import TrainConfig

RECALIBRATE_BATCHES = 10  # as pruning_methods.RECALIBRATE_BN_BATCHES
HINT_LAYER = "features"  # the narrow VGG's and VGG's last conv block output (after its pooling)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a pruned model spends the fine-tune budget. ``None`` keeps the benchmark's own setting.

    Example:
        >>> Recipe(lr=0.05, kd_alpha=0.5).describe()
        'lr 0.05, KD T 4 alpha 0.5'
    """

    lr: float | None = None
    schedule: str | None = None  # cosine | onecycle | constant ...
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    weight_decay: float | None = None
    recalibrate: bool = False  # BN statistics re-estimated on training batches before training
    kd_alpha: float = 0.0  # 0: no logit KD
    kd_temperature: float = 4.0
    hint_weight: float = 0.0  # 0: no feature hint
    hint_layer: str = HINT_LAYER
    batch_size: int | None = None  # another training batch size over the same data (same epochs: more steps)

    def __post_init__(self) -> None:
        if self.lr is not None:
            check_range("lr", self.lr, 1e-9)
        check_range("kd_alpha", self.kd_alpha, 0.0, 1.0)
        check_range("kd_temperature", self.kd_temperature, 1e-6)
        check_range("hint_weight", self.hint_weight, 0.0)
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0)
        check_range("warmup_epochs", self.warmup_epochs, 0)
        if self.batch_size is not None:
            check_range("batch_size", self.batch_size, 1)

    @property
    def distils(self) -> bool:
        return self.kd_alpha > 0 or self.hint_weight > 0

    def describe(self) -> str:
        parts = []
        if self.lr is not None:
            parts.append(f"lr {self.lr:g}")
        if self.schedule is not None:
            parts.append(self.schedule)
        if self.warmup_epochs:
            parts.append(f"warm-up {self.warmup_epochs} ep")
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        if self.weight_decay is not None:
            parts.append(f"wd {self.weight_decay:g}")
        if self.batch_size is not None:
            parts.append(f"batch {self.batch_size}")
        if self.recalibrate:
            parts.append("BN recal.")
        if self.kd_alpha:
            parts.append(f"KD T {self.kd_temperature:g} alpha {self.kd_alpha:g}")
        if self.hint_weight:
            parts.append(f"hint {self.hint_layer} x{self.hint_weight:g}")
        return ", ".join(parts) or "the benchmark's fine-tune (SGD, cosine, --finetune-lr)"

    def train_config(self, config: TrainConfig) -> TrainConfig:
        """``config`` (the benchmark's fine-tune settings) with this recipe's optimiser settings."""
        changes: dict[str, Any] = {"warmup_epochs": min(self.warmup_epochs, config.epochs),
                                   "label_smoothing": self.label_smoothing}  # fmt: skip
        for name in ("lr", "schedule", "weight_decay"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        return dataclasses.replace(config, **changes)

    def loader(self, loader: DataLoader) -> DataLoader:
        """``loader`` itself, or (``batch_size`` set) a shuffling loader of the same data at that batch size,
        drawing its order from the same generator (so a saved shuffle state carries over)."""
        if self.batch_size is None or self.batch_size == loader.batch_size:
            return loader
        return DataLoader(loader.dataset, batch_size=self.batch_size, shuffle=True, generator=loader.generator,
                          num_workers=loader.num_workers, drop_last=loader.drop_last)  # fmt: skip

    def prepare(
        self, teacher: nn.Module, student: nn.Module, loader: Any, example: torch.Tensor
    ) -> tuple[list[Any], list[nn.Parameter]]:
        """BN recalibration (if asked) on ``loader``, then the training hooks and their extra parameters.

        The teacher is a frozen copy of ``teacher``; a logit KD hook and a hint hook share one teacher
        forward per batch. Call :func:`close_hooks` on the hooks after training."""
        if self.recalibrate:
            recalibrate_bn(student, loader, num_batches=RECALIBRATE_BATCHES)
        if not self.distils:
            return [], []
        forward = TeacherForward(copy.deepcopy(teacher).eval())
        hooks: list[Any] = []
        params: list[nn.Parameter] = []
        if self.kd_alpha:
            hooks.append(
                SoftTargetDistillation(forward, temperature=self.kd_temperature, alpha=self.kd_alpha)
            )
        if self.hint_weight:
            hint = FeatureDistillation(forward, student, pairs={self.hint_layer: self.hint_layer},
                                       example_inputs=example[:1], weight=self.hint_weight)  # fmt: skip
            hooks.append(hint)
            params += list(hint.parameters())
        return hooks, params


def close_hooks(hooks: list[Any]) -> None:
    """Remove the forward hooks a recipe's hint hook put on the student and the teacher."""
    for hook in hooks:
        if hasattr(hook, "close"):
            hook.close()


RECIPES: Registry[Recipe] = Registry("fine-tune recipe")
RECIPES.register("default", Recipe())


def recipe(name: str) -> Recipe:
    """The registered recipe ``name`` (a clear error naming the known ones otherwise)."""
    if name not in RECIPES.names():
        raise ConfigError(f"unknown fine-tune recipe {name!r}; known: {', '.join(RECIPES.names())}")
    return RECIPES.get(name)
