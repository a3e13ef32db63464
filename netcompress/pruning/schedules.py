"""Gradual pruning (Zhu & Gupta 2017): train while the sparsity rises (one shot and iterative: ``iterative.py``).

A :class:`GradualPruner` training hook raises the sparsity every ``frequency_steps``
  optimiser steps along ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3``: prune fast
  while the network has redundancy, slowly near the end, and train throughout.

Fine-tuning goes through :func:`netcompress.training.fit` with a :class:`MaskKeeper`, and
accuracy through :func:`netcompress.evaluation.evaluate`; the summary holds sparsity and accuracy
per epoch.

Example recipe step::

    - {op: prune, method: gradual, final_sparsity: 0.9, epochs: 6, train: {lr: 0.01}}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from torch import nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.pruning.finetune import accuracy, check_train, method_train_config
from netcompress.pruning.finetune import train_config as as_train_config
from netcompress.pruning.masks import MaskKeeper
from netcompress.pruning.sparse_storage import write_sparse
from netcompress.pruning.unstructured import SCORES, UnstructuredConfig, WeightSelection, mask_lowest_


def polynomial_sparsity(
    step: int, *, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int
) -> float:
    """Zhu & Gupta's cubic schedule at optimiser step ``step`` (clamped to [begin, end]).

    Example:
        >>> polynomial_sparsity(50, initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=100)
        0.7
    """
    span = max(1, end_step - begin_step)
    progress = (step - begin_step) / span
    if progress <= 0.0:  # exact end points: no float drift in "reached the final sparsity"
        return initial_sparsity
    if progress >= 1.0:
        return final_sparsity
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


class GradualPruner:
    """Training hook raising unstructured sparsity along :func:`polynomial_sparsity`.

    After optimiser step ``t`` (counted from 1) with ``t >= begin_step`` and
    ``(t - begin_step) % frequency_steps == 0`` (or ``t >= end_step``) the masks are updated
    to the schedule's sparsity; masks only grow. Picklable, with ``state_dict`` for resume.

    Example:
        >>> pruner = GradualPruner(final_sparsity=0.9, end_step=500, frequency_steps=50)
        >>> fit(model, train_loader, hooks=[pruner, MaskKeeper()], config=TrainConfig(keep_best=False))
    """

    def __init__(
        self,
        *,
        final_sparsity: float,
        end_step: int,
        initial_sparsity: float = 0.0,
        begin_step: int = 0,
        frequency_steps: int = 1,
        prune: UnstructuredConfig | None = None,
    ) -> None:
        check_range("final_sparsity", final_sparsity, 0.0, 1.0)
        check_range("initial_sparsity", initial_sparsity, 0.0, final_sparsity)
        check_range("begin_step", begin_step, 0)
        check_range("end_step", end_step, begin_step + 1)
        check_range("frequency_steps", frequency_steps, 1)
        self.final_sparsity = final_sparsity
        self.initial_sparsity = initial_sparsity
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency_steps = frequency_steps
        self.prune = prune or UnstructuredConfig()
        self.step = 0
        self.applied = 0.0
        self.updates: list[list[float]] = []  # [step, sparsity] of every mask update

    def target(self, step: int) -> float:
        return polynomial_sparsity(
            step,
            initial_sparsity=self.initial_sparsity,
            final_sparsity=self.final_sparsity,
            begin_step=self.begin_step,
            end_step=self.end_step,
        )

    def after_step(self, model: nn.Module) -> None:
        self.step += 1
        t = self.step
        due = t >= self.end_step or (
            t >= self.begin_step and (t - self.begin_step) % self.frequency_steps == 0
        )
        target = self.target(t)
        if due and target > self.applied:
            self.apply(model, target)

    def apply(self, model: nn.Module, sparsity: float) -> dict[str, Any]:
        summary = mask_lowest_(model, self.prune.replace(amount=sparsity))
        self.applied = sparsity
        self.updates.append([self.step, round(summary["global_sparsity"], 6)])
        return summary

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {"target_sparsity": round(self.applied, 6)}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "applied": self.applied, "updates": [list(u) for u in self.updates]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.applied, self.updates = (
            state["step"],
            state["applied"],
            [list(u) for u in state["updates"]],
        )


@dataclasses.dataclass
class GradualConfig(WeightSelection):
    """``prune/gradual`` and :func:`prune_gradual_`: train while sparsity rises along Zhu & Gupta's cubic
    schedule to ``final_sparsity`` (the ramp spans ``ramp_fraction`` of training); weights ranked by
    ``criterion``; ``train`` holds the TrainConfig fields of the training (epochs come from ``epochs``).

    Example:
        >>> GradualConfig(final_sparsity=0.9, epochs=10, ramp_fraction=0.7)
    """

    final_sparsity: float = 0.8
    initial_sparsity: float = 0.0
    epochs: int = 5
    ramp_fraction: float = 0.75
    frequency_steps: int | None = None  # None: about 10 mask updates over the ramp
    criterion: str = "l1"  # the score: a name in unstructured.SCORES
    train: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("criterion", self.criterion, SCORES.names())
        check_train(self.train)
        check_range("final_sparsity", self.final_sparsity, 0.0, 1.0)
        check_range("initial_sparsity", self.initial_sparsity, 0.0, self.final_sparsity)
        check_range("epochs", self.epochs, 1)
        check_range("ramp_fraction", self.ramp_fraction, 0.01, 1.0)
        if self.frequency_steps is not None:
            check_range("frequency_steps", self.frequency_steps, 1)


def _num_batches(loader: Iterable) -> int:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError("gradual pruning needs a train_loader with a length (steps per epoch)") from None


def prune_gradual_(
    model: nn.Module,
    train_loader: Iterable,
    *,
    config: GradualConfig | None = None,
    prune: UnstructuredConfig | None = None,
    val_loader: Iterable | None = None,
    train_config: Any = None,
) -> dict[str, Any]:
    """Train ``model`` IN PLACE for ``config.epochs`` while its sparsity rises to ``final_sparsity``.

    ``train_config`` (TrainConfig or dict; default ``config.train``) sets the optimiser; ``keep_best`` is
    forced off, since the best early epoch would bring back a less sparse model. ``prune`` overrides the
    weight selection and score of ``config``.

    Example:
        >>> s = prune_gradual_(model, train_loader, val_loader=test_loader,
        ...                   config=GradualConfig(final_sparsity=0.9, epochs=6))
        >>> s["sparsity"], s["history"][-1]["sparsity"]
    """
    from netcompress.training import fit

    config = config or GradualConfig()
    prune = prune or selection(config, config.criterion)
    total_steps = config.epochs * _num_batches(train_loader)
    end_step = max(1, round(config.ramp_fraction * total_steps))
    pruner = GradualPruner(
        final_sparsity=config.final_sparsity,
        initial_sparsity=config.initial_sparsity,
        end_step=end_step,
        frequency_steps=config.frequency_steps or max(1, end_step // 10),
        prune=prune,
    )
    given = config.train if train_config is None else train_config
    tc = as_train_config(given, epochs=config.epochs, keep_best=False)
    history = fit(model, train_loader, val_loader=val_loader, config=tc, hooks=[pruner, MaskKeeper()])
    final = pruner.apply(model, config.final_sparsity)  # the ramp's end may fall between steps
    return {
        "final_sparsity": config.final_sparsity,
        "sparsity": final["global_sparsity"],
        "per_layer": final["per_layer"],
        "nonzero_params": final["nonzero_params"],
        "updates": pruner.updates,
        "end_step": end_step,
        "accuracy": accuracy(model, val_loader),
        "history": list(history.rows),
    }


def prune_gradual(model: nn.Module, train_loader: Iterable, **kwargs: Any) -> dict[str, Any]:
    """Alias of :func:`prune_gradual_` (prunes and trains ``model`` in place, returns the summary)."""
    return prune_gradual_(model, train_loader, **kwargs)


def selection(config: WeightSelection, criterion: str) -> UnstructuredConfig:
    """The :class:`UnstructuredConfig` a schedule re-applies: ``config``'s weights, scored by ``criterion``."""
    return UnstructuredConfig(
        method=criterion, scope=config.scope, include=config.include, exclude=config.exclude
    )


@register_method("prune", "gradual", config=GradualConfig)
def gradual(model: nn.Module, config: GradualConfig, data: MethodData) -> Result:
    """Gradual magnitude pruning during training (Zhu & Gupta)."""
    tc = method_train_config(config.train, data)
    summary = prune_gradual_(
        model, data.train_loader, config=config, val_loader=data.val_loader, train_config=tc
    )
    history = summary.pop("history")
    summary = write_sparse(model, summary, data.out_dir, save=config.save_sparse)
    return Result(model=model, summary=summary, history=history)
