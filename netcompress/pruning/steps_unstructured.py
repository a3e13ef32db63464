"""Recipe steps for unstructured and neuron pruning.

Example recipe steps::

    - {op: prune, method: l1_unstructured, amount: 0.7, scope: global, exclude: ["re:classifier.*"]}
    - {op: prune, method: random_unstructured, amount: 0.7, seed: 3}
    - {op: prune, method: gradual, final_sparsity: 0.9, epochs: 6, train: {lr: 0.01}}
    - {op: prune, method: iterative, amount_per_round: 0.5, rounds: 3, epochs_per_round: 2}
    - {op: prune, method: apoz, amount: 0.2, max_batches: 10, rounds: 2, epochs_per_round: 1}
    - {op: prune, method: mean_activation, amount: 0.2}

Unstructured steps write ``sparse.ncz`` (see :mod:`netcompress.pruning.sparse_storage`) into
the step folder and report its bytes beside the dense ``state_dict`` bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from netcompress.core.config import Config, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.pruning.neuron import NeuronPruneConfig
from netcompress.pruning.schedules import (
    GradualConfig,
    IterativeConfig,
    prune_gradual,
    prune_iterative,
    prune_neurons_iterative,
)
from netcompress.pruning.sparse_storage import save_sparse
from netcompress.pruning.unstructured import UnstructuredConfig, prune_unstructured_with_config

SPARSE_FILE = "sparse.ncz"


def _train_config(train: dict[str, Any], ctx: MethodData | None = None, **changes: Any) -> Any:
    """The step's nested ``train:`` mapping as a TrainConfig (run seed/device, no bar unless asked)."""
    from netcompress.training.config import TrainConfig

    config = TrainConfig.from_dict({"progress": False, **train}, where="train").replace(**changes)
    if ctx is None:
        return config
    from netcompress.training.supervised import run_config

    return run_config(config, ctx)


@dataclasses.dataclass
class _SelectFields(Config):
    """Fields shared by the unstructured steps: which weights, and whether to write sparse.ncz."""

    scope: str = "global"
    include: list[str] | None = None
    exclude: list[str] = dataclasses.field(default_factory=list)
    save_sparse: bool = True

    def prune_config(self, *, method: str, amount: float = 0.5, seed: int = 0) -> UnstructuredConfig:
        return UnstructuredConfig(
            amount=amount,
            method=method,
            scope=self.scope,
            include=self.include,
            exclude=self.exclude,
            seed=seed,
        )


@dataclasses.dataclass
class L1UnstructuredStep(_SelectFields):
    """Prune the smallest-magnitude weights (global or per layer) to ``amount`` sparsity."""

    amount: float = 0.5

    def __post_init__(self) -> None:
        self.prune_config(method="l1", amount=self.amount)  # validates amount/scope/include/exclude


@dataclasses.dataclass
class RandomUnstructuredStep(_SelectFields):
    """Prune randomly chosen weights to ``amount`` sparsity (the baseline)."""

    amount: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        self.prune_config(method="random", amount=self.amount, seed=self.seed)


@dataclasses.dataclass
class GradualStep(_SelectFields):
    """Train while sparsity rises along Zhu & Gupta's cubic schedule to ``final_sparsity``."""

    final_sparsity: float = 0.8
    initial_sparsity: float = 0.0
    epochs: int = 5
    ramp_fraction: float = 0.75
    frequency_steps: int | None = None
    criterion: str = "l1"
    train: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prune_config(method=self.criterion)
        self.schedule()
        _train_config(self.train)

    def schedule(self) -> GradualConfig:
        return GradualConfig(
            final_sparsity=self.final_sparsity,
            initial_sparsity=self.initial_sparsity,
            epochs=self.epochs,
            ramp_fraction=self.ramp_fraction,
            frequency_steps=self.frequency_steps,
        )


@dataclasses.dataclass
class IterativeStep(_SelectFields):
    """Prune ``amount_per_round`` of the remaining weights, fine-tune, ``rounds`` times."""

    amount_per_round: float = 0.2
    rounds: int = 3
    epochs_per_round: int = 1
    criterion: str = "l1"
    train: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prune_config(method=self.criterion)
        IterativeConfig(amount_per_round=self.amount_per_round, rounds=self.rounds)
        check_range("epochs_per_round", self.epochs_per_round, 0)
        _train_config(self.train)


@dataclasses.dataclass
class NeuronStep(Config):
    """Remove the least active neurons/channels of each prunable layer (optionally in rounds)."""

    amount: float = 0.2
    layers: list[str] | None = None
    max_batches: int | None = 10
    rounds: int = 1
    epochs_per_round: int = 0
    train: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        NeuronPruneConfig(amount=self.amount, layers=self.layers, max_batches=self.max_batches)
        check_range("rounds", self.rounds, 1)
        check_range("epochs_per_round", self.epochs_per_round, 0)
        _train_config(self.train)


def _with_storage(
    model: nn.Module, summary: dict[str, Any], ctx: MethodData, *, save: bool
) -> dict[str, Any]:
    if save:
        info = save_sparse(model, ctx.out_dir / SPARSE_FILE)
        summary.update(
            sparse_file=SPARSE_FILE,
            sparse_size_bytes=info["size_bytes"],
            dense_size_bytes=info["dense_size_bytes"],
            sparse_ratio=round(info["ratio"], 6),
        )
    return summary


@register_method("prune", "l1_unstructured", config=L1UnstructuredStep)
def _l1_step(model: nn.Module, config: L1UnstructuredStep, ctx: MethodData) -> Result:
    """Magnitude (L1) unstructured pruning through masks."""
    summary = prune_unstructured_with_config(
        model, config=config.prune_config(method="l1", amount=config.amount)
    )
    return Result(model=model, summary=_with_storage(model, summary, ctx, save=config.save_sparse))


@register_method("prune", "random_unstructured", config=RandomUnstructuredStep)
def _random_step(model: nn.Module, config: RandomUnstructuredStep, ctx: MethodData) -> Result:
    """Random unstructured pruning through masks (baseline)."""
    prune = config.prune_config(method="random", amount=config.amount, seed=config.seed)
    summary = prune_unstructured_with_config(model, config=prune)
    return Result(model=model, summary=_with_storage(model, summary, ctx, save=config.save_sparse))


@register_method("prune", "gradual", config=GradualStep)
def _gradual_step(model: nn.Module, config: GradualStep, ctx: MethodData) -> Result:
    """Gradual magnitude pruning during training (Zhu & Gupta)."""
    summary = prune_gradual(
        model,
        ctx.train_loader,
        config=config.schedule(),
        prune=config.prune_config(method=config.criterion),
        val_loader=ctx.val_loader,
        train_config=_train_config(config.train, ctx),
    )
    history = summary.pop("history")
    return Result(
        model=model, summary=_with_storage(model, summary, ctx, save=config.save_sparse), history=history
    )


@register_method("prune", "iterative", config=IterativeStep)
def _iterative_step(model: nn.Module, config: IterativeStep, ctx: MethodData) -> Result:
    """Iterative prune-and-fine-tune rounds (Han et al.)."""
    summary = prune_iterative(
        model,
        ctx.train_loader,
        config=IterativeConfig(amount_per_round=config.amount_per_round, rounds=config.rounds),
        prune=config.prune_config(method=config.criterion),
        val_loader=ctx.val_loader,
        train_config=_train_config(config.train, ctx, epochs=config.epochs_per_round),
    )
    history = summary.pop("history")
    return Result(
        model=model, summary=_with_storage(model, summary, ctx, save=config.save_sparse), history=history
    )


def _neuron_step(model: nn.Module, config: NeuronStep, ctx: MethodData, *, criterion: str) -> Result:
    loader = ctx.calib_loader if ctx.calib_loader is not None else ctx.train_loader
    if loader is None:
        raise ConfigError(f"prune/{criterion} needs data to measure activations (no calib or train loader)")
    new, summary = prune_neurons_iterative(
        model,
        loader,
        train_loader=ctx.train_loader if config.epochs_per_round > 0 else None,
        val_loader=ctx.val_loader,
        criterion=criterion,
        amount_per_round=config.amount,
        rounds=config.rounds,
        layers=config.layers,
        max_batches=config.max_batches,
        train_config=_train_config(config.train, ctx, epochs=config.epochs_per_round),
    )
    history = summary.pop("history")
    return Result(model=new, summary=summary, history=history or None)


@dataclasses.dataclass
class APoZStep(NeuronStep):
    """Remove the neurons/channels with the highest average percentage of zeros after the activation."""


@dataclasses.dataclass
class MeanActivationStep(NeuronStep):
    """Remove the neurons/channels with the lowest mean activation."""


@register_method("prune", "apoz", config=APoZStep)
def _apoz_step(model: nn.Module, config: APoZStep, ctx: MethodData) -> Result:
    """Neuron pruning by APoZ (average percentage of zeros after the activation)."""
    return _neuron_step(model, config, ctx, criterion="apoz")


@register_method("prune", "mean_activation", config=MeanActivationStep)
def _mean_activation_step(model: nn.Module, config: MeanActivationStep, ctx: MethodData) -> Result:
    """Neuron pruning by mean activation."""
    return _neuron_step(model, config, ctx, criterion="mean_activation")
