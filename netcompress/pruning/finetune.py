"""Fine-tuning between pruning rounds: the nested ``train:`` settings, accuracy, a masked fit.

The schedules (gradual, iterative), neuron pruning in rounds and iterative channel pruning all train
through :func:`netcompress.training.fit`; this module turns their settings into a ``TrainConfig``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from netcompress.core.methods import MethodData
from netcompress.pruning.masks import MaskKeeper


def check_train(train: dict[str, Any]) -> None:
    """Validate a method's nested ``train:`` mapping (a ConfigError names the bad key)."""
    from netcompress.training.config import TrainConfig

    TrainConfig.from_dict({"progress": False, **train}, where="train")


def train_config(train_config: Any = None, **changes: Any) -> Any:
    """A TrainConfig from None (defaults, no progress bar), a dict or a TrainConfig, with ``changes``."""
    from netcompress.training.config import TrainConfig

    if train_config is None:
        config = TrainConfig(progress=False)
    elif isinstance(train_config, dict):
        config = TrainConfig.from_dict({"progress": False, **train_config}, where="train")
    else:
        config = train_config
    return config.replace(**changes)


def run_train_config(config: Any, data: MethodData) -> Any:
    """The TrainConfig a method trains with: the run's seed and device unless the config set its own, the
    bar only when the run shows progress (``netcompress.training.supervised.run_config``, the one place)."""
    from netcompress.training.supervised import run_config

    return run_config(config, data)


def method_train_config(train: dict[str, Any], data: MethodData, **changes: Any) -> Any:
    """A method's ``train:`` mapping (no bar unless asked) as the TrainConfig it runs with."""
    return run_train_config(train_config(dict(train), **changes), data)


def accuracy(model: nn.Module, loader: Iterable | None) -> float | None:
    """Top-1 accuracy on ``loader`` (None without one)."""
    if loader is None:
        return None
    from netcompress.evaluation import evaluate

    return evaluate(model, loader)["accuracy"]


def finetune(
    model: nn.Module, train_loader: Iterable | None, val_loader: Iterable | None, tc: Any, *, round_index: int
) -> list[dict[str, Any]]:
    """Fit ``model`` in place keeping its masks; history rows tagged with ``round``. No loader or 0 epochs: []."""
    if train_loader is None or tc.epochs == 0:
        return []
    from netcompress.training import fit

    rows = fit(model, train_loader, val_loader=val_loader, config=tc, hooks=[MaskKeeper()]).rows
    return [{**row, "round": round_index} for row in rows]
