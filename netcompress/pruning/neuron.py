"""Neuron pruning: remove whole neurons / channels that (almost) never fire, physically.

The model is traced into the channel dependency graph of channel pruning, so residual and concat
models work: channels that must go together (a residual stage's stream, a GroupNorm group) form one
*unit* and share one decision. Every activation output carrying a unit's channels is measured over a
data loader (zeros and sums aggregated over all of them) and the unit gets an importance from a
registry (``CRITERIA``):

- ``apoz``: 1 - Average Percentage of Zeros after the activation (Hu et al. 2016): a neuron
  whose ReLU output is zero on most inputs carries little information;
- ``mean_activation``: the mean activation value.

The lowest ``round(amount * n)`` of the ``n`` units of each group are removed with the surgery of
channel pruning: every coupled producer's out features, BatchNorm/GroupNorm entries and consumers'
in features (a flatten's H*W inputs per channel) are cut, pruning masks along. Surviving weights are
kept as they were (E5: the smaller network starts from the survivors' weights), so a removed neuron
that was dead leaves the outputs unchanged; :func:`prune_neurons_iterative` repeats measure, remove,
fine-tune. Groups that cannot be pruned (coupled to the model's output, kept whole by a LayerNorm)
or that no activation carries are left whole and listed in ``summary["skipped"]`` with the reason.
An op the graph does not know raises :class:`UnsupportedModelError` naming it.

Example:
    >>> small, summary = prune_neurons(model, loader, criterion="apoz", amount=0.2)
    >>> summary["params_after"] < summary["params_before"]
    True
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import batch_inputs
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.core.registry import Registry
from netcompress.core.selection import name_matches as _matches
from netcompress.evaluation.harness import eval_mode
from netcompress.pruning.channel import ChannelPlan, apply_channel_plan
from netcompress.pruning.finetune import accuracy, check_train, finetune, method_train_config
from netcompress.pruning.finetune import train_config as as_train_config
from netcompress.pruning.graph import ChannelGraph, ChannelGroup
from netcompress.pruning.graph_tracing import trace_channels
from netcompress.pruning.masks import masked_parameters
from netcompress.pruning.neuron_graph import UnitStat, unit_statistics

CRITERIA: Registry[Callable[[UnitStat], torch.Tensor]] = Registry("neuron pruning criterion")


@CRITERIA.register("apoz")
def _apoz_importance(stat: UnitStat) -> torch.Tensor:
    """1 - APoZ: the share of inputs on which the neuron fires (higher = keep)."""
    return 1.0 - stat.zeros / stat.count.clamp(min=1)


@CRITERIA.register("mean_activation")
def _mean_importance(stat: UnitStat) -> torch.Tensor:
    """Mean activation value (higher = keep)."""
    return stat.sums / stat.count.clamp(min=1)


@dataclasses.dataclass
class NeuronFields(Config):
    """The fields of neuron pruning, declared once: ``amount`` of each prunable layer's neurons removed per
    round (measured on ``max_batches`` batches; None = all), ``rounds`` with ``epochs_per_round`` of
    fine-tuning between them (``train``: the other TrainConfig fields)."""

    amount: float = 0.2
    layers: list[str] | None = None
    max_batches: int | None = 10
    rounds: int = 1
    epochs_per_round: int = 0
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    # E5's control: the pruned architecture with every weight drawn afresh (not the survivors') at the end
    reinitialise: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, (int, float)):
            raise ConfigError(f"amount={self.amount!r} must be a number in [0, 1)")
        check_range("amount", self.amount, 0.0, 0.999)
        if self.max_batches is not None:
            check_range("max_batches", self.max_batches, 1)
        if isinstance(self.layers, str):
            raise ConfigError("layers must be a list of layer names or 're:' patterns, not a string")
        check_range("rounds", self.rounds, 1)
        check_range("epochs_per_round", self.epochs_per_round, 0)
        check_train(self.train)


@dataclasses.dataclass
class APoZConfig(NeuronFields):
    """``prune/apoz``: remove the neurons/channels with the highest average percentage of zeros after the
    activation."""


@dataclasses.dataclass
class MeanActivationConfig(NeuronFields):
    """``prune/mean_activation``: remove the neurons/channels with the lowest mean activation."""


@dataclasses.dataclass
class NeuronPruneConfig(NeuronFields):
    """:class:`NeuronFields` with the ``criterion`` named (a recipe step names it by its method instead).

    Example:
        >>> NeuronPruneConfig(criterion="apoz", amount=0.3, layers=["re:classifier\\..*"])
    """

    criterion: str = "apoz"

    def __post_init__(self) -> None:
        check_choice("criterion", self.criterion, CRITERIA.names())
        super().__post_init__()


def _batches(loader: Iterable, max_batches: int | None) -> Iterable[Any]:
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        yield batch_inputs(batch)


def _group_name(graph: ChannelGraph, group: ChannelGroup) -> str:
    """A group is reported under its first producer in the model's call order."""
    order = list(graph.layers)
    return min(group.producers, key=order.index) if group.producers else f"group{group.id}"


def _choose(graph: ChannelGraph, layers: list[str] | None) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """The groups to prune by name and the skipped ones with why; asked-for layers that cannot be pruned
    raise UnsupportedModelError."""
    named = {_group_name(graph, g): g for g in graph.groups if g.producers}
    for pattern in layers or ():
        if not any(_matches(p, pattern) for g in named.values() for p in g.producers):
            raise ConfigError(
                f"layer pattern {pattern!r} matches no prunable layer; layers: {', '.join(named)}"
            )
    chosen, skipped = {}, {}
    for name, group in named.items():
        asked = layers is not None and any(_matches(p, pat) for p in group.producers for pat in layers)
        if layers is not None and not asked:
            continue
        if not group.prunable:
            if asked:
                raise UnsupportedModelError(f"cannot prune neurons of layer {name!r}: {group.reason}")
            skipped[name] = group.reason
        else:
            chosen[name] = group
    return chosen, skipped


@torch.no_grad()
def neuron_statistics(
    model: nn.Module, loader: Iterable, *, layers: list[str] | None = None, max_batches: int | None = None
) -> tuple[dict[str, ChannelGroup], dict[str, UnitStat]]:
    """Trace ``model`` (unchanged), choose its prunable groups and measure their activations per unit.

    Returns the chosen groups and their statistics, both keyed by the group's first producer.

    Example:
        >>> groups, stats = neuron_statistics(model, loader, max_batches=4)
        >>> 1 - stats["0"].zeros / stats["0"].count   # per-neuron firing rate of layer "0"
    """
    groups, stats, _ = _measure(model, loader, layers=layers, max_batches=max_batches)
    return groups, stats


def _measure(
    model: nn.Module, loader: Iterable, *, layers: list[str] | None, max_batches: int | None
) -> tuple[dict[str, ChannelGroup], dict[str, UnitStat], dict[str, Any]]:
    batches = _batches(loader, max_batches)
    first = next(iter(batches), None)
    if first is None:
        raise ConfigError("neuron pruning needs at least one batch from the loader")
    with eval_mode(model):
        traced = trace_channels(model, first)
        chosen, skipped = _choose(traced.graph, layers)
        by_id = unit_statistics(traced, itertools.chain([first], batches), {g.id for g in chosen.values()})
    stats = {name: by_id[g.id] for name, g in chosen.items() if g.id in by_id}
    for name in [n for n in chosen if n not in stats]:
        if layers is not None:
            raise UnsupportedModelError(f"cannot prune neurons of layer {name!r}: no activation follows it")
        skipped[name] = "no activation carries these channels"
    return {n: chosen[n] for n in stats}, stats, {"traced": traced, "skipped": skipped, "inputs": first}


def prune_neurons(
    model: nn.Module,
    loader: Iterable,
    *,
    criterion: str = NeuronPruneConfig.criterion,
    amount: float = NeuronFields.amount,
    layers: list[str] | None = None,
    max_batches: int | None = NeuronFields.max_batches,
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove the ``amount`` least active units of each prunable group; return a NEW model.

    A unit is one neuron/channel, or the channels that must go together (a residual stage's channel in
    every block writing it, a GroupNorm group); it is judged by its activations aggregated over every
    activation that carries it. The input model is untouched; pruning masks of the copy are sliced
    along. ``layers`` restricts pruning to groups with a producer among these names or ``re:`` patterns.

    Example:
        >>> small, s = prune_neurons(mlp, test_loader, criterion="apoz", amount=0.25, max_batches=8)
        >>> s["layers"]["0"]["neurons_after"]
        48
    """
    config = NeuronPruneConfig(criterion=criterion, amount=amount, layers=layers, max_batches=max_batches)
    groups, stats, extra = _measure(model, loader, layers=config.layers, max_batches=config.max_batches)
    if not groups:  # a silent no-op would read as success; say what was found and why nothing qualifies
        why = "; ".join(f"{n!r}: {r}" for n, r in extra["skipped"].items()) or "none found in the traced graph"
        raise UnsupportedModelError(
            f"{type(model).__name__} has no neuron group to prune: a group needs a Conv/Linear output followed by "
            f"an activation and read only by layers that can be sliced (recurrent layers are left whole); "
            f"left whole: {why}"
        )
    graph = extra["traced"].graph
    report: dict[str, Any] = {}
    pruned_units: set[int] = set()
    for name, group in groups.items():
        importance = CRITERIA.get(config.criterion)(stats[name]).float().cpu()
        n = importance.numel()
        n_remove = min(n - 1, int(round(config.amount * n)))
        order = torch.sort(importance, stable=True).indices
        removed = torch.sort(order[:n_remove]).values
        pruned_units |= {group.unit_ids[k] for k in removed.tolist()}
        report[name] = {
            "producers": list(group.producers),
            "neurons_before": n,
            "neurons_after": n - n_remove,
            "removed": removed.tolist(),
            "removed_importance": [round(float(v), 6) for v in importance[removed]],
        }
    plan = ChannelPlan(graph=graph, pruned_units=pruned_units, group_ratios={})
    new = apply_channel_plan(model, plan, extra["inputs"])
    summary = {
        "criterion": config.criterion,
        "amount": config.amount,
        "layers": report,
        "skipped": extra["skipped"],
        "params_before": sum(p.numel() for p in model.parameters()),
        "params_after": sum(p.numel() for p in new.parameters()),
        "masked_parameters": len(masked_parameters(new)),
        # per layer, the original indices of the input / output channels that survive (None: not channel-wise)
        "kept_indices": plan.keep_indices(),
    }
    return new, summary


def prune_neurons_iterative(
    model: nn.Module,
    loader: Iterable,
    *,
    train_loader: Iterable | None,
    val_loader: Iterable | None = None,
    criterion: str = NeuronPruneConfig.criterion,
    amount_per_round: float = NeuronFields.amount,
    rounds: int = NeuronFields.rounds,
    layers: list[str] | None = None,
    max_batches: int | None = NeuronFields.max_batches,
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
    tc = as_train_config(train_config)
    current, rows, history = model, [], []
    for r in range(1, rounds + 1):
        current, summary = prune_neurons(
            current, loader, criterion=criterion, amount=amount_per_round, layers=layers,
            max_batches=max_batches,
        )  # fmt: skip
        row = {
            "round": r,
            "params": summary["params_after"],
            "neurons": {name: s["neurons_after"] for name, s in summary["layers"].items()},
            "accuracy_pruned": accuracy(current, val_loader),
        }
        history.extend(finetune(current, train_loader, val_loader, tc, round_index=r))
        row["accuracy"] = accuracy(current, val_loader)
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


def _neuron_method(model: nn.Module, config: NeuronFields, data: MethodData, *, criterion: str) -> Result:
    loader = data.calibration
    if loader is None:
        raise ConfigError(f"prune/{criterion} needs data to measure activations (no calib or train loader)")
    new, summary = prune_neurons_iterative(
        model,
        loader,
        train_loader=data.train_loader if config.epochs_per_round > 0 else None,
        val_loader=data.val_loader,
        criterion=criterion,
        amount_per_round=config.amount,
        rounds=config.rounds,
        layers=config.layers,
        max_batches=config.max_batches,
        train_config=method_train_config(config.train, data, epochs=config.epochs_per_round),
    )
    history = summary.pop("history")
    if config.reinitialise:
        summary["reinitialised"] = reinitialise_(new, seed=data.seed)
    return Result(model=new, summary=summary, history=history or None)


def reinitialise_(model: nn.Module, *, seed: int = 0) -> int:
    """Draw every parameter of ``model`` afresh IN PLACE (each module's ``reset_parameters``, seeded; BN
    running statistics reset); return how many modules were reset. E5's "without initialisation from the
    surviving weights": the pruned architecture trained from scratch.

    Example:
        >>> reinitialise_(small, seed=0)
        7
    """
    count = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                count += 1
            if callable(getattr(module, "reset_running_stats", None)):
                module.reset_running_stats()
    return count


@register_method("prune", "apoz", config=APoZConfig)
def apoz(model: nn.Module, config: APoZConfig, data: MethodData) -> Result:
    """Neuron pruning by APoZ (average percentage of zeros after the activation)."""
    return _neuron_method(model, config, data, criterion="apoz")


@register_method("prune", "mean_activation", config=MeanActivationConfig)
def mean_activation(model: nn.Module, config: MeanActivationConfig, data: MethodData) -> Result:
    """Neuron pruning by mean activation."""
    return _neuron_method(model, config, data, criterion="mean_activation")
