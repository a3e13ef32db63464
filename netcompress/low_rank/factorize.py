"""Low-rank factorisation of a model: :class:`FactorizeConfig`, the method ``low_rank/svd`` and
the ``factorize`` verb (a new model; the input is not modified).

Rank per layer, in order of precedence: a fixed ``rank``; else the largest rank within
``param_budget`` (a fraction of the layer's parameters); else the smallest rank keeping
``energy`` of the squared singular values. A layer whose factorised form would not have
fewer parameters than the original is left alone and reported under ``skipped``.

In a recipe::

    - {op: low_rank, method: svd, energy: 0.95, conv_mode: channel, exclude: [classifier]}
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from netcompress.architecture.layer_costs import add_layer_macs, param_count
from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, Result, apply, register_method
from netcompress.core.selection import select_modules, set_submodule
from netcompress.low_rank.layers import (
    FACTORIZATIONS,
    LowRank,
    LowRankAttributeError,
    factorize_layer,
    svd_factors,
)
from netcompress.low_rank.rank import energy_kept, rank_for_budget, rank_for_energy

CONV_MODES = ("channel", "spatial")


@dataclasses.dataclass
class FactorizeConfig(Config):
    """Which layers to factorise and how to pick their ranks.

    Example:
        >>> FactorizeConfig(energy=0.95, conv_mode="spatial", exclude=["classifier"])
    """

    include: list[str] | None = None
    exclude: list[str] = dataclasses.field(default_factory=list)
    rank: int | None = None
    energy: float = 0.9
    param_budget: float | None = None
    conv_mode: str = "channel"

    def __post_init__(self) -> None:
        self.include = list(self.include) if self.include is not None else None
        self.exclude = list(self.exclude)
        check_choice("conv_mode", self.conv_mode, CONV_MODES)
        check_range("energy", self.energy, 1e-6, 1.0)
        if self.rank is not None:
            check_range("rank", self.rank, 1)
        if self.param_budget is not None:
            check_range("param_budget", self.param_budget, 1e-6, 1.0)


LOW_RANK_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # a Conv3d factorises in channel mode like the others


def _method_for(layer: nn.Module, conv_mode: str) -> tuple[str | None, str | None]:
    """(registered factorisation name, or None with the reason it cannot be factorised)."""
    base = next((c for c in type(layer).__mro__ if c.__module__.startswith("torch.nn.")), nn.Module)
    if type(layer).forward is not base.forward:  # e.g. efficientnet's Conv2dStaticSamePadding pads itself
        return (
            None,
            f"{type(layer).__name__} overrides {base.__name__}.forward; plain layers would change its output",
        )
    if isinstance(layer, nn.Linear):
        return "linear", None
    if layer.groups != 1:
        return None, f"grouped convolution (groups={layer.groups})"
    spatial_ok = isinstance(layer, nn.Conv2d) and min(layer.kernel_size) > 1
    # spatial mode needs a 2-D kernel in both axes; other convs fall back to channel mode
    return ("conv_spatial" if conv_mode == "spatial" and spatial_ok else "conv_channel"), None


def _choose_rank(s, params_at, dense: int, cfg: FactorizeConfig) -> tuple[int, str]:
    full = len(s)
    if cfg.rank is not None:
        return min(cfg.rank, full), "fixed"
    if cfg.param_budget is not None:
        return rank_for_budget(params_at, budget_params=cfg.param_budget * dense, max_rank=full), "budget"
    return rank_for_energy(s, cfg.energy), "energy"


@register_method("low_rank", "svd", config=FactorizeConfig)
def svd(model: nn.Module, config: FactorizeConfig, data: MethodData) -> Result:
    """Truncated-SVD factorisation of Linear and conv layers (rank by energy, budget or fixed).

    Returns a new model; MACs are added to the summary when ``data.example_inputs`` is given.
    """
    cfg, example_inputs = config, data.example_inputs
    new_model = copy.deepcopy(model)
    chosen = select_modules(new_model, types=LOW_RANK_TYPES, include=cfg.include, exclude=cfg.exclude)
    if not chosen:
        raise ConfigError(
            f"factorize: no Linear/Conv1d/Conv2d/Conv3d layer selected in {type(model).__name__} "
            f"(include={cfg.include}, exclude={list(cfg.exclude)})"
        )
    layers, skipped = [], []
    owners: dict[int, list[str]] = {}  # a weight tied to another module's (an LM head and its embedding)
    for owner, module in new_model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(owner)
    for name, layer in chosen.items():
        method, reason = _method_for(layer, cfg.conv_mode)
        tied = [o for o in owners.get(id(getattr(layer, "weight", None)), []) if o != name]
        if method is not None and tied:
            method, reason = (
                None,
                f"its weight is tied to {tied[0]!r}'s: factorizing would untie it and add parameters",
            )
        if method is None:
            skipped.append({"name": name, "reason": reason})
            continue
        spec = FACTORIZATIONS.get(method)
        _, s, _ = svd_factors(spec.matrix(layer))
        dense = param_count(layer)

        def params_at(r: int, layer=layer, spec=spec) -> int:
            return spec.params_at_rank(layer, r)

        r, policy = _choose_rank(s, params_at, dense, cfg)
        if r < 1:
            skipped.append({"name": name, "reason": f"param_budget {cfg.param_budget} is below rank 1"})
            continue
        if params_at(r) >= dense:
            skipped.append(
                {
                    "name": name,
                    "reason": f"rank {r} needs {params_at(r)} params, not fewer than {dense}",
                    "rank": r,
                }
            )
            continue
        block = factorize_layer(layer, rank=r, method=method)
        set_submodule(new_model, name, block)
        layers.append(
            {
                "name": name,
                "method": method,
                "weight_shape": list(layer.weight.shape),
                "full_rank": len(s),
                "rank": r,
                "rank_policy": policy,
                "energy_kept": round(energy_kept(s, r), 6),
                "params_before": dense,
                "params_after": param_count(block),
            }
        )
    summary: dict[str, Any] = {
        "method": "svd",
        **cfg.to_dict(),
        "factorized": len(layers),
        "layers": layers,
        "skipped": skipped,
        "params_before": param_count(model),
        "params_after": param_count(new_model),
    }
    if example_inputs is not None:
        _keep_dense_where_read(new_model, chosen, layers, skipped, example_inputs)
        summary.update(factorized=len(layers), params_after=param_count(new_model))
        add_layer_macs(summary, layers, model, new_model, example_inputs)
    return Result(model=new_model, summary=summary)


def _keep_dense_where_read(
    model: nn.Module, originals: dict[str, nn.Module], layers: list[dict], skipped: list[dict], inputs: Any
) -> None:
    """Run ``model``; a factorized layer whose ``weight`` / ``stride``... the model's own code reads
    (HF ViT reads the patch conv's ``weight.dtype``, HF MobileNetV2 its convs' ``stride``) goes back to
    its dense original, reported under ``skipped`` with the attribute read."""
    from netcompress.core.inputs import call_model

    while True:
        try:
            with torch.no_grad():
                call_model(model.eval(), inputs)
            return
        except LowRankAttributeError as exc:
            name = next((n for n, m in model.named_modules() if m is exc.module), None)
            if name is None or name not in originals:
                raise
            set_submodule(model, name, originals[name])
            layers[:] = [r for r in layers if r["name"] != name]
            skipped.append(
                {"name": name, "reason": f"the model reads its {exc.name!r} outside the layer; kept dense"}
            )


def factorize(
    model: nn.Module, config: FactorizeConfig | None = None, *, example_inputs: Any = None, **fields: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Return a copy of ``model`` with Linear/Conv1d/Conv2d/Conv3d layers replaced by low-rank pairs,
    and a summary (per layer: method, full rank, chosen rank, energy kept, parameters, and
    MACs when ``example_inputs`` is given). The input model is not modified.

    ``fields`` are :class:`FactorizeConfig` fields (``include``, ``exclude``, ``rank``,
    ``energy``, ``param_budget``, ``conv_mode``); they override ``config``.
    ``conv_mode="channel"``: ``k x k`` conv to ``r`` channels then ``1 x 1``; ``"spatial"``:
    ``k x 1`` to ``r`` channels then ``1 x k`` (Conv2d with both kernel sides > 1).

    Example:
        >>> small, summary = nc.factorize(model, energy=0.95, exclude=["features.0"])
        >>> summary["params_before"], summary["params_after"]
    """
    base = config.to_dict() if config is not None else {}
    cfg = FactorizeConfig.from_dict({**base, **fields}, where="factorize")
    result = apply(model, cfg, MethodData(example_inputs=example_inputs))
    return result.model, result.summary


__all__ = ["CONV_MODES", "FactorizeConfig", "LowRank", "factorize"]
