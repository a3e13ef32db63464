"""Training settings, shared by ``fit``, fine-tuning steps, distillation and QAT."""

from __future__ import annotations

import dataclasses

import torch

from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.targets import TASKS

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclasses.dataclass
class TrainConfig(Config):
    """How to train: optimiser, schedule, epochs, seeding.

    ``schedule`` is followed per batch (``cosine``, ``onecycle``, the linear warm-up) or per
    epoch (``step``: the rate is multiplied by ``gamma`` every ``step_size`` epochs);
    ``onecycle`` has its own warm-up, so ``warmup_epochs`` must stay 0 with it.

    Example:
        >>> TrainConfig(epochs=5, lr=0.05, schedule="cosine")
    """

    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_size: int = 30  # epochs between decays for schedule="step"
    gamma: float = 0.1  # decay factor for schedule="step"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    # the task's loss (netcompress.core.targets): "auto" from the first batch's shapes, or named:
    # "cross_entropy", "segmentation" (per-pixel, skipping ignore_index), "multilabel" (BCE with logits)
    loss: str = "auto"
    ignore_index: int = -100
    grad_clip_norm: float | None = None
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    # Keep the weights of the epoch with the best validation accuracy. Off by default: recipes
    # validate on the test split, and choosing an epoch by test accuracy would flatter the result.
    keep_best: bool = False
    # Faster training on GPUs: "bf16"/"fp16" run the forward under autocast (fp16 with a gradient
    # scaler), channels_last stores 4-D activations NHWC (tensor cores); CPU default unchanged.
    precision: str = "fp32"
    channels_last: bool = False
    # under torchrun: let DDP tolerate parameters that get no gradient in a step (slower)
    find_unused_parameters: bool = False

    def train_config(self) -> TrainConfig:
        """Just the training fields, as a plain TrainConfig (a method config that extends TrainConfig
        trains with this)."""
        return TrainConfig(**{name: getattr(self, name) for name in TrainConfig.field_names()})

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("loss", self.loss, TASKS)
        check_range("epochs", self.epochs, 0)
        check_range("lr", self.lr, 0.0)
        check_range("momentum", self.momentum, 0.0, 1.0)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("step_size", self.step_size, 1)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("warmup_epochs", self.warmup_epochs, 0, max(self.epochs, 0))
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0)
        if self.grad_clip_norm is not None:
            check_range("grad_clip_norm", self.grad_clip_norm, 1e-12)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov=True needs optimizer='sgd' with momentum > 0")
        if self.schedule == "onecycle" and self.warmup_epochs:
            raise ConfigError(
                f"warmup_epochs={self.warmup_epochs} does not apply to schedule='onecycle' "
                "(it ramps up on its own); set warmup_epochs=0"
            )
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(
                f"device={self.device!r} is not a torch device (e.g. 'cpu', 'cuda:0')"
            ) from None


@dataclasses.dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tuning after compression (method ``train/finetune``): the fields and defaults of TrainConfig.

    Its own class because each config belongs to one method.
    """
