"""Training settings, shared by ``fit``, fine-tuning steps, distillation and QAT."""

from __future__ import annotations

import dataclasses

from netcompress.core.config import Config, check_choice, check_range

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "constant")


@dataclasses.dataclass
class TrainConfig(Config):
    """How to train: optimiser, schedule, epochs, seeding.

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
    grad_clip_norm: float | None = None
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    keep_best: bool = True  # keep the weights of the epoch with the best validation accuracy

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_range("epochs", self.epochs, 0)
        check_range("lr", self.lr, 0.0)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0)
