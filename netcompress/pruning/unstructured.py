"""Unstructured (weight) pruning: zero the least important individual weights, through masks.

Scores come from a registry (``SCORES``: ``l1`` = |w|, ``random`` = seeded uniform noise).
``scope="layer"`` prunes ``amount`` of every selected layer; ``scope="global"`` ranks all
selected weights together (one threshold on the score), so layers with small weights lose more.
Exactly ``round(amount * n)`` weights are pruned (ties broken by position, not by a ``<=``
threshold that could take more). Weights already masked count as pruned and are taken first,
so calling again with a larger amount prunes only the difference: schedules rely on that.

Example:
    >>> summary = prune_unstructured_(model, amount=0.5, method="l1", scope="global")
    >>> summary["global_sparsity"]
    0.5
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from netcompress.core.config import Config, check_choice, check_fraction
from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.core.registry import Registry
from netcompress.core.selection import select_modules
from netcompress.pruning.masks import (
    MASK_SUFFIX,
    PRUNABLE_TYPES,
    apply_mask,
    enforce_masks,
    recurrent_weights,
    sparsity_report,
)
from netcompress.pruning.sparse_storage import write_sparse

ScoreFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

SCORES: Registry[ScoreFn] = Registry("unstructured pruning method")
SCOPES = ("global", "layer")
DEFAULT_MAX_LAYER_SPARSITY = 0.98


@SCORES.register("l1")
def _l1_score(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Magnitude |w|: the smallest weights change the output least (Han et al. 2015)."""
    return weight.detach().abs().float().cpu()


@SCORES.register("random")
def _random_score(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise: the baseline a criterion must beat."""
    return torch.rand(weight.shape, generator=generator)


@dataclasses.dataclass
class WeightSelection(Config):
    """Which weights unstructured pruning may mask, and whether a recipe step writes ``sparse.ncz``.

    The fields every unstructured method shares (``prune/l1_unstructured``, ``random_unstructured``,
    ``gradual``, ``iterative``), declared once here.
    """

    scope: str = "global"
    # the per-layer floor of global pruning: no layer loses more than this fraction of its weights
    # (a global ranking once emptied a whole conv of the narrow VGG at 90%); 1.0 turns it off
    max_layer_sparsity: float = DEFAULT_MAX_LAYER_SPARSITY
    include: list[str] | None = None
    exclude: list[str] = dataclasses.field(default_factory=list)
    # a method given an out_dir writes the masked weights there as sparse.ncz (see sparse_storage)
    save_sparse: bool = True

    def __post_init__(self) -> None:
        check_choice("scope", self.scope, SCOPES)
        _check_cap(self.max_layer_sparsity)
        if isinstance(self.include, str) or isinstance(self.exclude, str):
            raise ConfigError("include/exclude must be lists of layer names or 're:' patterns, not a string")
        self.exclude = list(self.exclude)
        self.include = None if self.include is None else list(self.include)


def _check_cap(cap: Any) -> None:
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0.0 < cap <= 1.0:
        raise ConfigError(f"max_layer_sparsity={cap!r} must be a number in (0, 1] (1.0 turns the floor off)")


def _check_amount(amount: Any) -> None:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise ConfigError(f"amount={amount!r} must be a number in [0, 1)")
    check_fraction("amount", amount)


@dataclasses.dataclass
class L1UnstructuredConfig(WeightSelection):
    """``prune/l1_unstructured``: mask the smallest-magnitude weights to ``amount`` sparsity.

    Example:
        >>> nc.apply(model, L1UnstructuredConfig(amount=0.7, scope="layer")).summary["global_sparsity"]
    """

    amount: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_amount(self.amount)


@dataclasses.dataclass
class RandomUnstructuredConfig(L1UnstructuredConfig):
    """``prune/random_unstructured``: mask randomly chosen weights to ``amount`` sparsity (the baseline)."""

    seed: int = 0


@dataclasses.dataclass
class UnstructuredConfig(RandomUnstructuredConfig):
    """What :func:`mask_lowest_` masks: ``amount`` of the selected weights by score ``method``.

    The settings the schedules (:class:`GradualPruner`, :func:`prune_iterative_`) re-apply at rising
    amounts; a recipe step uses :class:`L1UnstructuredConfig` or :class:`RandomUnstructuredConfig`
    (the step's ``method`` key names the step itself).

    Example:
        >>> UnstructuredConfig(amount=0.7, method="l1", scope="layer", exclude=["classifier"])
    """

    method: str = "l1"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("method", self.method, SCORES.names())


# the verb's ``method`` -> the config of the registered method it runs
METHOD_CONFIGS: dict[str, type[L1UnstructuredConfig]] = {
    "l1": L1UnstructuredConfig,
    "random": RandomUnstructuredConfig,
}


def _selected_weights(model: nn.Module, config: WeightSelection) -> dict[str, nn.Module]:
    layers = select_modules(model, types=PRUNABLE_TYPES, include=config.include, exclude=config.exclude)
    layers = {n: m for n, m in layers.items() if m._parameters.get("weight") is not None}
    if not layers:
        raise ConfigError(
            f"no Conv1d/Conv2d/Conv3d/Linear weight selected (include={config.include}, exclude={config.exclude})"
        )
    return layers


def _scores(layer: nn.Module, method: str, generator: torch.Generator) -> torch.Tensor:
    weight = layer.weight
    score = SCORES.get(method)(weight, generator).flatten().clone()
    mask = layer._buffers.get("weight" + MASK_SUFFIX)
    if mask is not None:
        # already pruned weights rank below every live one, so they are "pruned first"
        score[~mask.flatten().cpu()] = -1.0
    return score


def _prune_lowest(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Boolean keep-mask that drops exactly round(amount * n) lowest scores."""
    k = int(round(amount * scores.numel()))
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        # stable sort: equal scores are taken in position order, so the count is exact
        order = torch.sort(scores, stable=True).indices
        keep[order[:k]] = False
    return keep


def _prune_lowest_capped(
    scores: dict[str, torch.Tensor], amount: float, cap: float
) -> dict[str, torch.Tensor]:
    """Global keep-masks dropping round(amount * n) lowest scores, at most ``cap`` of any one layer.

    Water-filling: rank globally; a layer that would lose more than its cap loses exactly its cap
    (its lowest scores) and leaves the ranking; the rest is ranked again, until none overflows.
    Weights already masked (score -1) count against a layer's cap but are never un-masked.
    """
    total = sum(s.numel() for s in scores.values())
    k = int(round(amount * total))
    limits = {n: max(int(cap * s.numel() + 1e-9), int((s < 0).sum())) for n, s in scores.items()}
    if sum(limits.values()) < k:
        raise ConfigError(
            f"global amount={amount} cannot be reached with max_layer_sparsity={cap}: at most "
            f"{sum(limits.values()) / total:.4f} of the selected weights may go; raise max_layer_sparsity "
            "(1.0 turns the per-layer floor off)"
        )
    keeps: dict[str, torch.Tensor] = {}
    pool = dict(scores)
    while True:
        names = list(pool)
        left = k - sum(int((~keeps[n]).sum()) for n in keeps)
        keep_all = _keep_exact(torch.cat([pool[n] for n in names]), left)
        split = dict(zip(names, torch.split(keep_all, [pool[n].numel() for n in names])))
        over = [n for n in names if int((~split[n]).sum()) > limits[n]]
        if not over:
            keeps.update(split)
            return {n: keeps[n] for n in scores}
        for n in over:
            keeps[n] = _keep_exact(pool.pop(n), limits[n])


def _keep_exact(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean keep-mask dropping exactly ``count`` lowest scores (stable: ties in position order)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if count > 0:
        keep[torch.sort(scores, stable=True).indices[:count]] = False
    return keep


def prune_unstructured_(
    model: nn.Module,
    *,
    amount: float = L1UnstructuredConfig.amount,
    method: str = "l1",
    scope: str = WeightSelection.scope,
    max_layer_sparsity: float = WeightSelection.max_layer_sparsity,
    include: list[str] | None = None,
    exclude: list[str] | tuple[str, ...] = (),
    seed: int = RandomUnstructuredConfig.seed,
    config: L1UnstructuredConfig | RandomUnstructuredConfig | None = None,
) -> dict[str, Any]:
    """Mask the lowest-scoring weights of Conv1d/Conv2d/Conv3d/Linear layers IN PLACE; return a summary.

    ``method`` picks the registered method (``"l1"``: ``prune/l1_unstructured``, ``"random"``:
    ``prune/random_unstructured``, seeded by ``seed``); the other keywords are its config's fields.
    ``config`` (an :class:`L1UnstructuredConfig` or :class:`RandomUnstructuredConfig`) replaces the keywords.
    ``amount`` is the sparsity reached over the selected weights (already-zero/masked weights
    count as pruned). With ``scope="global"`` no layer loses more than ``max_layer_sparsity``
    (default 0.98; 1.0 turns this floor off). ``include``/``exclude`` take layer names or ``re:`` patterns. The summary
    holds per-layer and global sparsity of the selected weights and the model's non-zero count.

    Example:
        >>> s = prune_unstructured_(model, amount=0.9, scope="layer", exclude=["re:classifier.*"])
        >>> s["per_layer"]["features.0"]
        0.9
    """
    from netcompress.core.methods import apply

    if config is not None:  # the recipe step's config instead of the keywords
        return apply(model, config).summary
    check_choice("method", method, list(METHOD_CONFIGS))
    fields: dict[str, Any] = {
        "amount": amount,
        "scope": scope,
        "max_layer_sparsity": max_layer_sparsity,
        "include": include,
        "exclude": exclude,
    }
    if method == "random":
        fields["seed"] = seed
    config = METHOD_CONFIGS[method].from_dict(fields, where="prune_unstructured_")
    return apply(model, config).summary


def prune_unstructured(model: nn.Module, **fields: Any) -> dict[str, Any]:
    """Alias of :func:`prune_unstructured_` (masks ``model`` in place, returns the summary)."""
    return prune_unstructured_(model, **fields)


def mask_lowest_(
    model: nn.Module, config: L1UnstructuredConfig, *, method: str | None = None
) -> dict[str, Any]:
    """Mask ``config.amount`` of the selected weights IN PLACE, lowest score first; return the summary.

    The algorithm under every unstructured method; ``method`` (``"l1"``/``"random"``) defaults to
    ``config.method`` for an :class:`UnstructuredConfig`, else to the config's own score.

    Example:
        >>> mask_lowest_(model, UnstructuredConfig(amount=0.3))["global_sparsity"]
        0.3
    """
    method = method or getattr(config, "method", None) or _score_of(config)
    seed = getattr(config, "seed", 0)
    layers = _selected_weights(model, config)
    generator = torch.Generator().manual_seed(seed)
    scores = {name: _scores(layer, method, generator) for name, layer in layers.items()}
    if config.scope == "global":
        keeps = _prune_lowest_capped(scores, config.amount, config.max_layer_sparsity)
    else:
        keeps = {name: _prune_lowest(s, config.amount) for name, s in scores.items()}
    for name, layer in layers.items():
        apply_mask(layer, "weight", keeps[name].view_as(layer.weight))
    return _summary(model, layers, config, method)


def _score_of(config: L1UnstructuredConfig) -> str:
    return next(name for name, cls in METHOD_CONFIGS.items() if type(config) is cls)


def _masked(model: nn.Module, config: L1UnstructuredConfig, data: MethodData) -> Result:
    summary = mask_lowest_(model, config)
    return Result(model=model, summary=write_sparse(model, summary, data.out_dir, save=config.save_sparse))


@register_method("prune", "l1_unstructured", config=L1UnstructuredConfig)
def l1_unstructured(model: nn.Module, config: L1UnstructuredConfig, data: MethodData) -> Result:
    """Magnitude (L1) unstructured pruning through masks."""
    return _masked(model, config, data)


@register_method("prune", "random_unstructured", config=RandomUnstructuredConfig)
def random_unstructured(model: nn.Module, config: RandomUnstructuredConfig, data: MethodData) -> Result:
    """Random unstructured pruning through masks (baseline)."""
    return _masked(model, config, data)


def _summary(
    model: nn.Module, layers: dict[str, nn.Module], config: L1UnstructuredConfig, method: str
) -> dict[str, Any]:
    for module in model.modules():
        enforce_masks(module)  # so the zero counts below see every mask, not only this call's
    report = sparsity_report(model)
    per_layer = {name: report["per_layer"][name] for name in layers}
    selected = sum(layers[n].weight.numel() for n in layers)
    zeros = _zero_count(layer.weight for layer in layers.values())
    params = sum(p.numel() for p in model.parameters())
    skipped = left_dense_recurrent(model)
    return {
        "method": method,
        "scope": config.scope,
        "amount": config.amount,
        "max_layer_sparsity": config.max_layer_sparsity if config.scope == "global" else None,
        "per_layer": per_layer,
        "skipped": skipped,
        "global_sparsity": zeros / max(1, selected),
        "selected_params": selected,
        "zero_params": zeros,
        "params": params,
        "nonzero_params": params - _zero_count(model.parameters()),
        "model_sparsity": report["global"],
    }


@torch.no_grad()
def _zero_count(tensors: Any) -> int:
    """Zero entries over ``tensors`` (masks are enforced, so pruned weights are real zeros)."""
    return sum(int(t.numel() - torch.count_nonzero(t)) for t in tensors)


def left_dense_recurrent(model: nn.Module) -> dict[str, str]:
    """The unmasked LSTM/GRU/RNN weight matrices of ``model``, each with why it stayed dense; warns once
    when there are any, so an LSTM classifier "pruned 50%" is not read as half zeros (only its Linear
    head was pruned; ``model_sparsity`` counts the recurrent weights).

    Example:
        >>> left_dense_recurrent(nn.Sequential(nn.LSTM(4, 8)))
        {'0.weight_ih_l0': '...', '0.weight_hh_l0': '...'}
    """
    found = {}
    for mod_name, module in model.named_modules():
        for p_name in recurrent_weights(module):
            if p_name + MASK_SUFFIX not in module._buffers:
                key = f"{mod_name}.{p_name}" if mod_name else p_name
                found[key] = (
                    f"a weight of {type(module).__name__} (recurrent): pruning covers Conv1d/Conv2d/Conv3d/Linear "
                    "weights, so it is left dense"
                )
    if found:
        count = sum(
            getattr(
                model.get_submodule(k.rpartition(".")[0]) if "." in k else model, k.rpartition(".")[2]
            ).numel()
            for k in found
        )
        warnings.warn(
            f"{len(found)} recurrent weight matrices ({count} parameters, e.g. {next(iter(found))}) are left "
            "dense: pruning covers Conv1d/Conv2d/Conv3d/Linear weights; see the summary's skipped and model_sparsity",
            stacklevel=3,
        )
    return found
