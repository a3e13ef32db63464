"""Neuron pruning: remove whole neurons / channels that (almost) never fire, physically.

For each prunable layer (a Linear, Conv1d or Conv2d whose output passes an activation and then
reaches another such layer) the activation outputs are measured over a data loader and every
channel gets an importance from a registry (``CRITERIA``):

- ``apoz``: 1 - Average Percentage of Zeros after the activation (Hu et al. 2016): a neuron
  whose ReLU output is zero on most inputs carries little information;
- ``mean_activation``: the mean activation value.

The lowest ``round(amount * n)`` channels of each layer are removed: the layer's out features
(weight rows, bias), any BatchNorm on the way and the next layer's in features (for a conv
flattened into a Linear, each channel's H*W consecutive inputs) are cut. Surviving weights are
kept as they were (E5: re-initialisation from the survivors), so a removed neuron that was
dead leaves the outputs unchanged.

The model is traced with ``torch.fx`` and must be a simple chain (MLPs, VGG-style nets,
Sequentials, flatten/view included); a residual add, a concat or an unknown op between two
layers raises :class:`UnsupportedModelError` naming it. Channel pruning of arbitrary graphs is
``prune_channels`` (structured pruning) instead.

Example:
    >>> small, summary = prune_neurons(model, loader, criterion="apoz", amount=0.2)
    >>> summary["params_after"] < summary["params_before"]
    True
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import args_kwargs, batch_inputs
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.core.registry import Registry
from netcompress.core.selection import select_modules
from netcompress.evaluation.harness import eval_mode
from netcompress.pruning.finetune import accuracy, check_train, finetune, method_train_config
from netcompress.pruning.finetune import train_config as as_train_config
from netcompress.pruning.masks import MASK_SUFFIX, masked_parameters
from netcompress.pruning.neuron_graph import PRODUCERS, Span, spans_of, trace_chain


class _Stat:
    """Per-channel zero count and sum of one activation output."""

    def __init__(self, channel_dim: int) -> None:
        self.channel_dim = channel_dim
        self.zeros: torch.Tensor | None = None
        self.sums: torch.Tensor | None = None
        self.count = 0

    def update(self, out: torch.Tensor) -> None:
        x = out.detach().movedim(self.channel_dim, -1)
        x = x.reshape(-1, x.shape[-1])
        zeros, sums = (x == 0).sum(0).double(), x.double().sum(0)
        self.zeros = zeros if self.zeros is None else self.zeros + zeros
        self.sums = sums if self.sums is None else self.sums + sums
        self.count += x.shape[0]


CRITERIA: Registry[Callable[[_Stat], torch.Tensor]] = Registry("neuron pruning criterion")


@CRITERIA.register("apoz")
def _apoz_importance(stat: _Stat) -> torch.Tensor:
    """1 - APoZ: the share of inputs on which the neuron fires (higher = keep)."""
    return 1.0 - stat.zeros / max(1, stat.count)


@CRITERIA.register("mean_activation")
def _mean_importance(stat: _Stat) -> torch.Tensor:
    """Mean activation value (higher = keep)."""
    return stat.sums / max(1, stat.count)


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


class _StatsInterpreter(fx.Interpreter):
    """Runs the traced model, accumulating statistics of the watched activation outputs."""

    def __init__(self, gm: fx.GraphModule, watch: dict[str, _Stat]) -> None:
        super().__init__(gm)
        self.watch = watch

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        stat = self.watch.get(n.name)
        if stat is not None:
            stat.update(out)
        return out


def _batches(loader: Iterable, max_batches: int | None) -> Iterable[Any]:
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        yield batch_inputs(batch)


def _positional(gm: fx.GraphModule, inputs: Any) -> tuple[Any, ...]:
    """``inputs`` (tensor, tuple or dict) as the positional args of the traced graph's placeholders."""
    args, kwargs = args_kwargs(inputs, "model inputs")
    if not kwargs:
        return args
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    unknown = sorted(set(kwargs) - {str(n.target) for n in placeholders})
    if unknown:
        raise ConfigError(f"neuron pruning's torch.fx trace of the model has no inputs named {unknown}")
    out = []
    for node in placeholders:
        if str(node.target) in kwargs:
            out.append(kwargs[str(node.target)])
        elif node.args:  # the argument's default
            out.append(node.args[0])
        else:
            raise ConfigError(f"neuron pruning: the batch lacks the model input {str(node.target)!r}")
    return tuple(out)


@torch.no_grad()
def neuron_statistics(
    model: nn.Module, loader: Iterable, *, layers: list[str] | None = None, max_batches: int | None = None
) -> tuple[dict[str, Span], dict[str, _Stat]]:
    """Trace ``model`` (unchanged), find prunable layers and measure their activation outputs.

    Example:
        >>> spans, stats = neuron_statistics(model, loader, max_batches=4)
        >>> 1 - stats["0"].zeros / stats["0"].count   # per-neuron firing rate of layer "0"
    """
    gm, chain = trace_chain(model)
    with eval_mode(model):
        batches = _batches(loader, max_batches)
        first = next(iter(batches), None)
        if first is None:
            raise ConfigError("neuron pruning needs at least one batch from the loader")
        ShapeProp(gm).propagate(*_positional(gm, first))
        spans = spans_of(gm, chain)
        chosen = _choose(model, spans, layers)
        stats = {name: _Stat(spans[name].act_dim) for name in chosen}
        interp = _StatsInterpreter(gm, {spans[name].act_node: stats[name] for name in chosen})
        interp.run(*_positional(gm, first))
        for inputs in batches:
            interp.run(*_positional(gm, inputs))
    return {name: spans[name] for name in chosen}, stats


def _choose(model: nn.Module, spans: dict[str, Span], layers: list[str] | None) -> list[str]:
    if layers is None:
        for span in spans.values():
            if span.fatal:
                raise UnsupportedModelError(
                    f"cannot prune neurons of layer {span.producer!r}: {span.problem}"
                )
        return [n for n, s in spans.items() if not s.problem]
    chosen = list(select_modules(model, types=PRODUCERS, include=layers))
    for name in chosen:
        span = spans.get(name)
        if span is None or span.problem:
            why = span.problem if span else "it is not called in forward"
            raise UnsupportedModelError(f"cannot prune neurons of layer {name!r}: {why}")
    return chosen


def _slice_(module: nn.Module, names: Iterable[str], dim: int, keep: torch.Tensor) -> None:
    """Replace ``module.<name>`` by its ``keep`` entries along ``dim`` (parameters stay parameters).

    A pruning mask ``<name>_mask`` is sliced the same way, so weight sparsity from an earlier
    unstructured step stays enforced in the smaller layer.
    """
    names = list(names)
    names += [n + MASK_SUFFIX for n in names if n + MASK_SUFFIX in module._buffers]
    for name in names:
        value = getattr(module, name, None)
        if value is None:
            continue
        sliced = value.detach().index_select(dim, keep.to(value.device)).clone()
        if isinstance(value, nn.Parameter):
            setattr(module, name, nn.Parameter(sliced, requires_grad=value.requires_grad))
        else:
            module._buffers[name] = sliced


def _shrink_out_(module: nn.Module, keep: torch.Tensor) -> None:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        _slice_(module, ("weight", "bias", "running_mean", "running_var"), 0, keep)
        module.num_features = len(keep)
        return
    _slice_(module, ("weight", "bias"), 0, keep)
    attr = "out_features" if isinstance(module, nn.Linear) else "out_channels"
    setattr(module, attr, len(keep))


def _shrink_in_(module: nn.Module, keep: torch.Tensor) -> None:
    _slice_(module, ("weight",), 1, keep)
    attr = "in_features" if isinstance(module, nn.Linear) else "in_channels"
    setattr(module, attr, len(keep))


def prune_neurons(
    model: nn.Module,
    loader: Iterable,
    *,
    criterion: str = NeuronPruneConfig.criterion,
    amount: float = NeuronFields.amount,
    layers: list[str] | None = None,
    max_batches: int | None = NeuronFields.max_batches,
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove the ``amount`` least active neurons of each prunable layer; return a NEW model.

    The input model is untouched; pruning masks of the copy are sliced along. ``layers``
    restricts pruning to names or ``re:`` patterns; the output layer is never pruned.

    Example:
        >>> small, s = prune_neurons(mlp, test_loader, criterion="apoz", amount=0.25, max_batches=8)
        >>> s["layers"]["0"]["neurons_after"]
        48
    """
    config = NeuronPruneConfig(criterion=criterion, amount=amount, layers=layers, max_batches=max_batches)
    new = copy.deepcopy(model)
    spans, stats = neuron_statistics(new, loader, layers=config.layers, max_batches=config.max_batches)
    modules = dict(new.named_modules())
    params_before = sum(p.numel() for p in new.parameters())
    report: dict[str, Any] = {}
    for name, span in spans.items():
        importance = CRITERIA.get(config.criterion)(stats[name]).float().cpu()
        n = importance.numel()
        n_remove = min(n - 1, int(round(config.amount * n)))
        order = torch.sort(importance, stable=True).indices
        keep = torch.sort(order[n_remove:]).values
        removed = torch.sort(order[:n_remove]).values
        _shrink_out_(modules[name], keep)
        for bn in span.bns:
            _shrink_out_(modules[bn], keep)
        inner = span.flatten_inner
        in_keep = (keep[:, None] * inner + torch.arange(inner)).flatten() if inner > 1 else keep
        _shrink_in_(modules[span.consumer], in_keep)
        report[name] = {
            "neurons_before": n,
            "neurons_after": len(keep),
            "removed": removed.tolist(),
            "removed_importance": [round(float(v), 6) for v in importance[removed]],
        }
    params_after = sum(p.numel() for p in new.parameters())
    summary = {
        "criterion": config.criterion,
        "amount": config.amount,
        "layers": report,
        "params_before": params_before,
        "params_after": params_after,
        "masked_parameters": len(masked_parameters(new)),
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
    return Result(model=new, summary=summary, history=history or None)


@register_method("prune", "apoz", config=APoZConfig)
def apoz(model: nn.Module, config: APoZConfig, data: MethodData) -> Result:
    """Neuron pruning by APoZ (average percentage of zeros after the activation)."""
    return _neuron_method(model, config, data, criterion="apoz")


@register_method("prune", "mean_activation", config=MeanActivationConfig)
def mean_activation(model: nn.Module, config: MeanActivationConfig, data: MethodData) -> Result:
    """Neuron pruning by mean activation."""
    return _neuron_method(model, config, data, criterion="mean_activation")
