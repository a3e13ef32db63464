"""Optimiser builders, one per ``TrainConfig.optimizer`` name."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from netcompress.core.registry import Registry
from netcompress.training.config import TrainConfig

OptimizerBuilder = Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer]
OPTIMIZER_BUILDERS: Registry[OptimizerBuilder] = Registry("optimizer")


@OPTIMIZER_BUILDERS.register("sgd")
def _sgd(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


@OPTIMIZER_BUILDERS.register("adam")
def _adam(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    # Adam's weight_decay is an L2 term in the gradient; use "adamw" for decoupled decay
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


@OPTIMIZER_BUILDERS.register("adamw")
def _adamw(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def trainable_parameters(
    model: nn.Module, extra_parameters: Iterable[nn.Parameter] = ()
) -> list[nn.Parameter]:
    """The model's parameters that require grad, then ``extra_parameters``, each once.

    Example:
        >>> len(trainable_parameters(nn.Linear(2, 2)))
        2
    """
    seen: set[int] = set()
    params = []
    for p in [*model.parameters(), *extra_parameters]:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


def build_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``config.optimizer`` over ``params``.

    Example:
        >>> build_optimizer(list(nn.Linear(2, 2).parameters()), TrainConfig(optimizer="adamw", lr=1e-3))
    """
    return OPTIMIZER_BUILDERS.get(config.optimizer)(params, config)
