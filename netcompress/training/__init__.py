"""Training: one readable loop (``fit``), its config, hooks, schedules and runtime seam.

Example:
    >>> from netcompress.training import TrainConfig, fit
    >>> history = fit(model, train_loader, val_loader=test_loader, config=TrainConfig(epochs=3))
"""

from netcompress.training.config import OPTIMIZERS, SCHEDULES, FinetuneConfig, TrainConfig
from netcompress.training.history import History
from netcompress.training.hooks import TrainingHook, call_hooks, call_loss_hooks
from netcompress.training.loop import fit
from netcompress.training.optimizers import OPTIMIZER_BUILDERS, build_optimizer, trainable_parameters
from netcompress.training.runtime import Runtime, rng_state, seed_everything, set_rng_state
from netcompress.training.schedules import SCHEDULE_FNS, LRSchedule, lr_at, lr_factor

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_BUILDERS",
    "SCHEDULES",
    "SCHEDULE_FNS",
    "FinetuneConfig",
    "History",
    "LRSchedule",
    "Runtime",
    "TrainConfig",
    "TrainingHook",
    "build_optimizer",
    "call_hooks",
    "call_loss_hooks",
    "fit",
    "fit_",
    "lr_at",
    "lr_factor",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "trainable_parameters",
]

fit_ = fit  # the in-place name (it trains the model it is given); fit stays for existing code
