"""When to prune: one shot, iterative prune-and-fine-tune, and gradual (Zhu & Gupta 2017).

- one shot: prune to the target once, optionally fine-tune;
- iterative: prune ``amount_per_round`` of the *remaining* weights, fine-tune, repeat
  ``rounds`` times (sparsity after round r is ``1 - (1 - k)^r``), as in Han et al. 2015;
- gradual: a :class:`GradualPruner` training hook raises the sparsity every ``frequency_steps``
  optimiser steps along ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3``: prune fast
  while the network has redundancy, slowly near the end, and train throughout.

Fine-tuning goes through :func:`netcompress.training.fit` with a :class:`MaskKeeper`, and
accuracy through :func:`netcompress.evaluation.evaluate`. Each function returns a JSON-able
summary with sparsity and accuracy per round (or per epoch).

Example:
    >>> summary = prune_iterative(model, train_loader, val_loader=test_loader,
    ...                           amount_per_round=0.5, rounds=3, train_config=TrainConfig(epochs=2))
    >>> [r["sparsity"] for r in summary["rounds"]]
    [0.5, 0.75, 0.875]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from torch import nn

from netcompress.core.config import Config, check_range
from netcompress.core.errors import ConfigError
from netcompress.pruning.masks import MaskKeeper
from netcompress.pruning.neuron import prune_neurons
from netcompress.pruning.unstructured import UnstructuredConfig, prune_unstructured_with_config


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
        summary = prune_unstructured_with_config(model, config=self.prune.replace(amount=sparsity))
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
class GradualConfig(Config):
    """Settings of :func:`prune_gradual` (the pruning ramp spans ``ramp_fraction`` of training).

    Example:
        >>> GradualConfig(final_sparsity=0.9, epochs=10, ramp_fraction=0.7)
    """

    final_sparsity: float = 0.8
    initial_sparsity: float = 0.0
    epochs: int = 5
    ramp_fraction: float = 0.75
    frequency_steps: int | None = None  # None: about 10 mask updates over the ramp

    def __post_init__(self) -> None:
        check_range("final_sparsity", self.final_sparsity, 0.0, 1.0)
        check_range("initial_sparsity", self.initial_sparsity, 0.0, self.final_sparsity)
        check_range("epochs", self.epochs, 1)
        check_range("ramp_fraction", self.ramp_fraction, 0.01, 1.0)
        if self.frequency_steps is not None:
            check_range("frequency_steps", self.frequency_steps, 1)


def _train_config(train_config: Any, **changes: Any) -> Any:
    from netcompress.training import TrainConfig

    if train_config is None:
        config = TrainConfig(progress=False)
    elif isinstance(train_config, dict):
        config = TrainConfig.from_dict(train_config, where="train_config")
    else:
        config = train_config
    return config.replace(**changes)


def _accuracy(model: nn.Module, loader: Iterable | None) -> float | None:
    if loader is None:
        return None
    from netcompress.evaluation import evaluate

    return evaluate(model, loader)["accuracy"]


def _num_batches(loader: Iterable) -> int:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError("gradual pruning needs a train_loader with a length (steps per epoch)") from None


def prune_gradual(
    model: nn.Module,
    train_loader: Iterable,
    *,
    config: GradualConfig | None = None,
    prune: UnstructuredConfig | None = None,
    val_loader: Iterable | None = None,
    train_config: Any = None,
) -> dict[str, Any]:
    """Train ``model`` IN PLACE for ``config.epochs`` while its sparsity rises to ``final_sparsity``.

    ``train_config`` (TrainConfig or dict) sets the optimiser; ``keep_best`` is forced off,
    since the best early epoch would bring back a less sparse model.

    Example:
        >>> s = prune_gradual(model, train_loader, val_loader=test_loader,
        ...                   config=GradualConfig(final_sparsity=0.9, epochs=6))
        >>> s["sparsity"], s["history"][-1]["sparsity"]
    """
    from netcompress.training import fit

    config = config or GradualConfig()
    prune = prune or UnstructuredConfig()
    total_steps = config.epochs * _num_batches(train_loader)
    end_step = max(1, round(config.ramp_fraction * total_steps))
    pruner = GradualPruner(
        final_sparsity=config.final_sparsity,
        initial_sparsity=config.initial_sparsity,
        end_step=end_step,
        frequency_steps=config.frequency_steps or max(1, end_step // 10),
        prune=prune,
    )
    tc = _train_config(train_config, epochs=config.epochs, keep_best=False)
    history = fit(model, train_loader, val_loader=val_loader, config=tc, hooks=[pruner, MaskKeeper()])
    final = pruner.apply(model, config.final_sparsity)  # the ramp's end may fall between steps
    return {
        "final_sparsity": config.final_sparsity,
        "sparsity": final["global_sparsity"],
        "per_layer": final["per_layer"],
        "nonzero_params": final["nonzero_params"],
        "updates": pruner.updates,
        "end_step": end_step,
        "accuracy": _accuracy(model, val_loader),
        "history": list(history.rows),
    }


@dataclasses.dataclass
class IterativeConfig(Config):
    """Settings of :func:`prune_iterative`: prune ``amount_per_round`` of what remains, ``rounds`` times.

    Example:
        >>> IterativeConfig(amount_per_round=0.5, rounds=3)   # 50%, 75%, 87.5%
    """

    amount_per_round: float = 0.2
    rounds: int = 3

    def __post_init__(self) -> None:
        check_range("amount_per_round", self.amount_per_round, 0.0, 1.0)
        check_range("rounds", self.rounds, 1)


def prune_iterative(
    model: nn.Module,
    train_loader: Iterable | None,
    *,
    config: IterativeConfig | None = None,
    prune: UnstructuredConfig | None = None,
    val_loader: Iterable | None = None,
    train_config: Any = None,
) -> dict[str, Any]:
    """Prune and fine-tune ``model`` IN PLACE round by round; summary per round.

    ``train_loader=None`` (or ``train_config.epochs == 0``) skips fine-tuning, which makes
    one round a plain one-shot prune with accuracy measured.

    Example:
        >>> s = prune_iterative(model, train_loader, val_loader=test_loader,
        ...                     config=IterativeConfig(amount_per_round=0.5, rounds=2))
        >>> [(r["sparsity"], r["accuracy"]) for r in s["rounds"]]
    """
    config = config or IterativeConfig()
    prune = prune or UnstructuredConfig()
    tc = _train_config(train_config)
    rounds: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    for r in range(1, config.rounds + 1):
        target = 1.0 - (1.0 - config.amount_per_round) ** r
        summary = prune_unstructured_with_config(model, config=prune.replace(amount=target))
        row = {
            "round": r,
            "target_sparsity": round(target, 6),
            "sparsity": summary["global_sparsity"],
            "nonzero_params": summary["nonzero_params"],
            "accuracy_pruned": _accuracy(model, val_loader),
        }
        history.extend(_finetune(model, train_loader, val_loader, tc, round_index=r))
        row["accuracy"] = _accuracy(model, val_loader)
        rounds.append(row)
    return {
        "method": prune.method,
        "scope": prune.scope,
        "amount_per_round": config.amount_per_round,
        "rounds": rounds,
        "sparsity": rounds[-1]["sparsity"],
        "accuracy": rounds[-1]["accuracy"],
        "history": history,
    }


def prune_one_shot(
    model: nn.Module,
    train_loader: Iterable | None = None,
    *,
    prune: UnstructuredConfig | None = None,
    val_loader: Iterable | None = None,
    train_config: Any = None,
) -> dict[str, Any]:
    """Prune ``model`` IN PLACE to ``prune.amount`` at once, then fine-tune if a loader is given.

    Example:
        >>> prune_one_shot(model, train_loader, prune=UnstructuredConfig(amount=0.8))["rounds"][0]
    """
    prune = prune or UnstructuredConfig()
    config = IterativeConfig(amount_per_round=prune.amount, rounds=1)
    return prune_iterative(
        model, train_loader, config=config, prune=prune, val_loader=val_loader, train_config=train_config
    )


def _finetune(
    model: nn.Module, train_loader: Iterable | None, val_loader: Iterable | None, tc: Any, *, round_index: int
) -> list[dict[str, Any]]:
    if train_loader is None or tc.epochs == 0:
        return []
    from netcompress.training import fit

    rows = fit(model, train_loader, val_loader=val_loader, config=tc, hooks=[MaskKeeper()]).rows
    return [{**row, "round": round_index} for row in rows]


def prune_neurons_iterative(
    model: nn.Module,
    loader: Iterable,
    *,
    train_loader: Iterable | None,
    val_loader: Iterable | None = None,
    criterion: str = "apoz",
    amount_per_round: float = 0.1,
    rounds: int = 3,
    layers: list[str] | None = None,
    max_batches: int | None = None,
    train_config: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Neuron pruning in rounds (E5): measure on ``loader``, remove, fine-tune, repeat. NEW model.

    Each round removes ``amount_per_round`` of each layer's *remaining* neurons; survivors keep
    their trained weights. The input model is untouched.

    Example:
        >>> small, s = prune_neurons_iterative(mlp, val_loader, train_loader=train_loader, rounds=3)
        >>> [r["params"] for r in s["rounds"]]
    """
    check_range("rounds", rounds, 1)
    tc = _train_config(train_config)
    current, rows, history = model, [], []
    for r in range(1, rounds + 1):
        current, summary = prune_neurons(
            current,
            loader,
            criterion=criterion,
            amount=amount_per_round,
            layers=layers,
            max_batches=max_batches,
        )
        row = {
            "round": r,
            "params": summary["params_after"],
            "neurons": {name: s["neurons_after"] for name, s in summary["layers"].items()},
            "accuracy_pruned": _accuracy(current, val_loader),
        }
        history.extend(_finetune(current, train_loader, val_loader, tc, round_index=r))
        row["accuracy"] = _accuracy(current, val_loader)
        rows.append(row)
    params_before = sum(p.numel() for p in model.parameters())
    return current, {
        "criterion": criterion,
        "amount_per_round": amount_per_round,
        "params_before": params_before,
        "params_after": rows[-1]["params"],
        "rounds": rows,
        "accuracy": rows[-1]["accuracy"],
        "history": history,
    }
