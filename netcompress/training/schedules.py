"""Learning-rate schedules as pure functions of the global batch index.

The rate of batch ``step`` depends only on ``step``, the number of batches per epoch and the
config, so a resumed run needs to remember one integer, and the schedule can be plotted or
tested without training anything. Each schedule returns a factor applied to every parameter
group's initial rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from netcompress.core.registry import Registry
from netcompress.training.config import TrainConfig

# factor(step, total_steps, steps_per_epoch, config) -> multiplier of the base rate
ScheduleFn = Callable[[int, int, int, TrainConfig], float]
SCHEDULE_FNS: Registry[ScheduleFn] = Registry("learning-rate schedule")

# one-cycle shape, as in Smith & Topin (and torch's OneCycleLR defaults): start at lr/25,
# peak at lr after 30% of the batches, then cosine down to lr/(25 * 1e4)
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4


@SCHEDULE_FNS.register("constant")
def _constant(step: int, total_steps: int, steps_per_epoch: int, config: TrainConfig) -> float:
    return 1.0


@SCHEDULE_FNS.register("cosine")
def _cosine(step: int, total_steps: int, steps_per_epoch: int, config: TrainConfig) -> float:
    # per batch, from 1 at `step` 0 towards 0 at `total_steps` (never reached: the last batch is total-1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


@SCHEDULE_FNS.register("step")
def _step(step: int, total_steps: int, steps_per_epoch: int, config: TrainConfig) -> float:
    # per epoch: the decay counts whole epochs, as papers state it ("x0.1 at epochs 30, 60")
    return config.gamma ** ((step // steps_per_epoch) // config.step_size)


@SCHEDULE_FNS.register("onecycle")
def _onecycle(step: int, total_steps: int, steps_per_epoch: int, config: TrainConfig) -> float:
    # phase boundaries exactly as torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos")
    up_end = ONECYCLE_PCT_START * total_steps - 1
    low, final = 1.0 / ONECYCLE_DIV, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    if step <= up_end and up_end > 0:
        return _cos_between(low, 1.0, step / up_end)
    down = max(total_steps - 1 - up_end, 1e-12)
    return _cos_between(1.0, final, min(max(step - up_end, 0.0) / down, 1.0))


def _cos_between(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * pct))


def lr_factor(config: TrainConfig, *, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate for 0-based batch ``step`` of the whole run.

    A linear warm-up over ``config.warmup_epochs`` epochs (per batch, from 1/W to 1) comes
    first; the main schedule then runs over the remaining batches.

    Example:
        >>> cfg = TrainConfig(epochs=4, schedule="step", step_size=2, gamma=0.1)
        >>> lr_factor(cfg, step=25, steps_per_epoch=10)  # epoch 2 -> one decay
        0.1
    """
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    fn = SCHEDULE_FNS.get(config.schedule)
    return fn(step - warmup, total - warmup, steps_per_epoch, config)


def lr_at(config: TrainConfig, *, step: int, steps_per_epoch: int) -> float:
    """The learning rate of batch ``step`` (``config.lr`` times :func:`lr_factor`).

    Example:
        >>> lr_at(TrainConfig(lr=0.1, epochs=2, schedule="cosine"), step=10, steps_per_epoch=10)
        0.05
    """
    return config.lr * lr_factor(config, step=step, steps_per_epoch=steps_per_epoch)


class LRSchedule:
    """Sets every parameter group's rate before each batch; its whole state is the batch count.

    Example:
        >>> sched = LRSchedule(optimizer, TrainConfig(epochs=3), steps_per_epoch=50)
        >>> sched.apply()  # before the batch; then sched.advance() after it
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, config: TrainConfig, *, steps_per_epoch: int
    ) -> None:
        self.optimizer, self.config, self.steps_per_epoch = optimizer, config, steps_per_epoch
        self.step = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def apply(self) -> float:
        """Set the rates for the coming batch; return the first group's rate."""
        factor = lr_factor(self.config, step=self.step, steps_per_epoch=self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def advance(self) -> None:
        self.step += 1

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
