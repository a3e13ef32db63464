"""Structured pruning of transformers: attention heads, FFN neurons and the residual-stream width.

:func:`prune_transformer` (and the method ``prune/transformer``) returns a physically smaller copy:

1. find the attention and FFN blocks by structure (``transformer_blocks``: ``nn.MultiheadAttention``,
   ``nn.TransformerEncoderLayer``, hand-written q/k/v/out attention, Hugging Face BERT, ViT, GPT-2, Llama);
2. score every head, neuron and stream channel (``transformer_importance``: magnitude, Taylor/Fisher on
   data, Wanda) and keep the best in each block (``heads`` and ``ffn`` are per-block shares, at least
   ``min_heads`` heads stay); grouped-query attention keeps whole key/value groups (``gqa="groups"``) or
   the same number of query heads in every group (``gqa="queries"``), so groups stay even;
3. slice the layers (``transformer_surgery``) and check the result against the masked original on the
   example inputs (``transformer_verify``): a block whose forward was not followed is an error naming it.

The residual stream (``hidden``) keeps one channel set in every embedding, norm and layer that reads or
writes it. Pruning it changes LayerNorm/RMSNorm statistics, so the pruned model equals the original with
those channels zeroed AND its norms computing their statistics over the kept channels only (not the
original with channels masked); that is what is verified. The model config's ``hidden_size`` is updated;
head counts differ per layer after a prune, so the HF config's ``num_attention_heads`` is left as it was
(no forward reads it; the modules' own counts are updated).

Example:
    >>> small = prune_transformer(model, {"input_ids": ids, "attention_mask": mask}, heads=0.25, ffn=0.5)
    >>> small, summary = transformer_prune(model, x, TransformerPruneConfig(heads=0.5, importance="wanda"), loader=dl)
    >>> summary["heads"][0]  # {'name': ..., 'before': 4, 'after': 2, ...}
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from netcompress.core.adapters import adapter_hint
from netcompress.core.config import Config, check_choice, check_fraction, check_range
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import call_model
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.core.model_check import check_model_call
from netcompress.core.selection import name_matches
from netcompress.evaluation.harness import eval_mode
from netcompress.pruning.transformer_allocation import plan_global, smallest_reaching
from netcompress.pruning.transformer_blocks import Blocks, find_blocks
from netcompress.pruning.transformer_experts import check_fused_experts
from netcompress.pruning.transformer_head_dim import IMPORTANCES as HEAD_DIM_IMPORTANCES
from netcompress.pruning.transformer_head_dim_search import check_head_dim_config, head_dim_prune
from netcompress.pruning.transformer_importance import CRITERIA, UnitScores, unit_importance
from netcompress.pruning.transformer_reconstruction import reconstruct_outputs_
from netcompress.pruning.transformer_selection import (
    check_removes_something,
    plan_transformer_pruning,
    queries_fallback,
)
from netcompress.pruning.transformer_stream import find_outputs_only, stream_layers
from netcompress.pruning.transformer_surgery import TransformerPlan, apply_transformer_plan_
from netcompress.pruning.transformer_verify import verify_pruned
from netcompress.quantization.value_tracing import module_state_kept

GQA_MODES = ("groups", "queries")
ALLOCATIONS = ("uniform", "global")


@dataclasses.dataclass
class TransformerPruneConfig(Config):
    """``prune/transformer`` and :func:`prune_transformer`: shares of heads, FFN neurons and stream channels removed.

    ``heads``/``ffn`` apply to every block (each block keeps at least ``min_heads`` heads); ``hidden`` to the
    one residual stream. ``importance``: ``magnitude``, ``taylor`` (Fisher of unit gates on labelled batches)
    or ``wanda`` (activation-weighted magnitude); the data-driven ones read ``calib_batches`` batches of the
    calibration loader (the training loader when there is none). ``gqa``: ``groups`` removes whole key/value
    groups (where no whole group goes at the share, e.g. one group left, query heads within the groups instead:
    summary ``gqa_queries_fallback``), ``queries`` the same number of query heads in every group. ``round_to``: FFN and stream widths
    kept in multiples of this. ``ignore``: block names or ``re:`` patterns left whole. ``mac_target``
    (e.g. 2.0; 0 = off): scale ``heads``/``ffn``/``hidden`` by one factor (they set the split, each capped at
    0.95), the smallest that leaves ``mac_target`` times fewer MACs on the example inputs; the summary holds
    the shares used and the MACs reached. ``allocation``: ``uniform`` (the shares above, the same in every
    block) or ``global`` (``transformer_allocation``: with ``mac_target``, heads and neurons ranked over all
    blocks and the split searched for the largest kept score; ``heads``/``ffn`` = 0 keeps that kind whole,
    the share values are otherwise unused). ``reconstruct``: after the verified prune, refit each pruned block's
    output projection (attention out, FFN down) by least squares to the unpruned model's outputs on
    ``calib_batches`` batches (``transformer_reconstruction``); the summary gains ``reconstruction``.
    ``head_dim_qk``/``head_dim_v``: shares of the query/key and value channels removed inside every head
    (every head stays; ``transformer_head_dim_search``), with ``heads=0`` and ``hidden=0``; ``mac_target``
    scales them with ``ffn``. ``head_dim_importance``: ``activation`` (calibration batches) or ``magnitude``.
    """

    heads: float = 0.25
    ffn: float = 0.25
    hidden: float = 0.0
    importance: str = "magnitude"
    min_heads: int = 1
    gqa: str = "groups"
    round_to: int = 1
    calib_batches: int = 4
    ignore: list[str] = dataclasses.field(default_factory=list)
    mac_target: float = 0.0
    reconstruct: bool = False
    allocation: str = "uniform"
    head_dim_qk: float = 0.0
    head_dim_v: float = 0.0
    head_dim_importance: str = "activation"

    def __post_init__(self) -> None:
        for name in ("heads", "ffn", "hidden", "head_dim_qk", "head_dim_v"):
            check_fraction(name, getattr(self, name))
        check_choice("importance", self.importance, CRITERIA)
        check_choice("gqa", self.gqa, GQA_MODES)
        check_range("min_heads", self.min_heads, 1)
        check_range("round_to", self.round_to, 1)
        check_range("calib_batches", self.calib_batches, 1)
        check_choice("allocation", self.allocation, ALLOCATIONS)
        check_choice("head_dim_importance", self.head_dim_importance, HEAD_DIM_IMPORTANCES)
        check_head_dim_config(self)
        if self.allocation == "global" and (not self.mac_target or self.hidden > 0):
            raise ConfigError(
                "allocation='global' spends a mac_target over heads and FFN neurons: set mac_target, hidden=0"
            )
        if self.mac_target and self.mac_target <= 1.0:
            raise ConfigError(
                f"mac_target={self.mac_target!r} must be above 1 (e.g. 2.0 for half the MACs), or 0"
            )
        if isinstance(self.ignore, str):
            raise ConfigError("ignore must be a list of block names or 're:' patterns, not a string")
        self.ignore = list(self.ignore)


def _check_blocks(blocks: Blocks, config: TransformerPruneConfig, model: nn.Module) -> None:
    unknown = {
        n: r
        for n, r in blocks.unknown.items()
        if config.hidden > 0 or not any(name_matches(n, p) for p in config.ignore)
    }
    if unknown and (config.heads > 0 or config.hidden > 0):
        listed = "; ".join(f"{n!r} ({r})" for n, r in unknown.items())
        raise UnsupportedModelError(
            f"attention modules with a structure the transformer pruner does not recognise: {listed}"
            f"{adapter_hint(model)}"
        )
    if config.heads > 0 and not blocks.attention:
        raise UnsupportedModelError(
            "heads > 0 but the model has no attention block the transformer pruner recognises"
        )
    if config.ffn > 0 and not blocks.ffn:
        raise UnsupportedModelError(
            "ffn > 0 but the model has no FFN block (fc1/fc2, linear1/linear2, gate/up/down, ...)"
        )
    for pattern in config.ignore:
        if (
            not any(name_matches(u.name, pattern) for u in [*blocks.attention, *blocks.ffn])
            and pattern not in blocks.unknown
        ):
            raise ConfigError(f"ignore pattern {pattern!r} matches no attention or FFN block")


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


# the CPU attention kernel PyTorch's counter has no formula for (it would count attention as free)
_CPU_SDPA = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
EXTRA_FLOPS = (
    {} if _CPU_SDPA is None or _CPU_SDPA.default in flop_counter.flop_registry else {_CPU_SDPA: _sdpa_flops}
)


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs of one forward pass on ``example_inputs`` (tensor, tuple or dict), from PyTorch's FLOP counter.

    Attention's ``softmax(QK^T)V`` products count too (PyTorch's counter misses the CPU kernel).
    """
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOPS)
    # grad mode keeps nn.TransformerEncoderLayer off its fused fast path, which the counter cannot see; what the
    # forward stores on its modules (a recurrent state, then holding a graph) is put back
    with eval_mode(model), module_state_kept(model), torch.enable_grad(), counter:
        call_model(model, example_inputs)
    return counter.get_total_flops() // 2


def _summary(
    model: nn.Module, small: nn.Module, blocks: Blocks, plan: TransformerPlan, inputs: Any
) -> dict[str, Any]:
    heads = []
    for u in blocks.attention:
        q, kv = plan.heads.get(u.name), plan.kv_heads.get(u.name)
        heads.append({
            "name": u.name, "before": u.num_heads, "after": len(q) if q else u.num_heads,
            "kv_before": u.num_kv_heads, "kv_after": len(kv) if kv else u.num_kv_heads, "kept": q or list(range(u.num_heads)),
        })  # fmt: skip
    ffn = []
    for u in blocks.ffn:
        kept = plan.neurons.get(u.name, list(range(u.width)))
        ffn.append({"name": u.name, "before": u.width, "after": len(kept), "kept": kept})
    params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in small.parameters()))
    macs = (count_macs(model, inputs), count_macs(small, inputs))
    width = plan.hidden_width
    return {
        "heads": heads, "ffn": ffn, "hidden_before": width,
        "hidden_after": width if plan.hidden is None else len(plan.hidden),
        "params_before": params[0], "params_after": params[1], "param_reduction": params[0] / max(params[1], 1),
        "macs_before": macs[0], "macs_after": macs[1], "mac_reduction": macs[0] / max(macs[1], 1),
        "unknown": dict(blocks.unknown),
    }  # fmt: skip


def _prune_and_verify(
    model: nn.Module, example_inputs: Any, config: TransformerPruneConfig, blocks: Blocks, loader: Any
) -> tuple[TransformerPruneConfig, TransformerPlan, nn.Module, Any]:
    """Score, plan, slice a copy and verify it: (config, plan, pruned copy, stream layers or None)."""
    stream = stream_layers(model, blocks) if config.hidden > 0 else None
    width = stream.width if stream is not None else _width(model, blocks)
    scores = unit_importance(
        model, blocks, config.importance, stream=stream, loader=loader, batches=config.calib_batches
    )
    if config.allocation == "global":
        plan = plan_global(model, blocks, scores, config, width, lambda m: count_macs(m, example_inputs))
        small = apply_transformer_plan_(copy.deepcopy(model), blocks, plan)
    elif config.mac_target:
        config, plan, small = _plan_for_macs(model, blocks, scores, config, width, example_inputs)
    else:
        plan = plan_transformer_pruning(blocks, scores, config, width)
        check_removes_something(blocks, plan, config)
        small = apply_transformer_plan_(copy.deepcopy(model), blocks, plan)
    verify_pruned(model, small, blocks, plan, example_inputs, stream)
    return config, plan, small, stream


def transformer_prune(
    model: nn.Module, example_inputs: Any, config: TransformerPruneConfig, *, loader: Any = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The algorithm under :func:`prune_transformer` and ``prune/transformer``: (verified pruned copy, summary)."""
    if example_inputs is None:
        raise ConfigError("prune_transformer needs example_inputs (what the model is called with)")
    check_model_call(model, example_inputs, where="prune_transformer")
    if config.head_dim_qk or config.head_dim_v:
        return head_dim_prune(
            model,
            example_inputs,
            config,
            loader=loader,
            transformer_prune=transformer_prune,
            count_macs=count_macs,
        )
    if config.reconstruct and loader is None:
        raise ConfigError("prune/transformer reconstruct=True needs calibration batches (a loader)")
    blocks = find_blocks(model)
    dense_experts = check_fused_experts(model, bool(blocks.ffn), config.ffn)
    _check_blocks(blocks, config, model)
    try:
        config, plan, small, stream = _prune_and_verify(model, example_inputs, config, blocks, loader)
    except UnsupportedModelError as first:
        if not config.hidden:
            raise
        # a layer as wide as the stream whose output no module reads (DiT's proj_out_2: pixels) is no stream
        # writer; found on a copy (a forward under grad may leave graph tensors on the modules), tried second
        # (SigLIP's heads feed a matmul of both towers: their outputs are the stream)
        only = find_outputs_only(copy.deepcopy(model).eval(), example_inputs)
        if not only:
            raise
        blocks.outputs_only = only
        try:
            config, plan, small, stream = _prune_and_verify(model, example_inputs, config, blocks, loader)
        except UnsupportedModelError:
            raise first from None
    if stream is not None and stream.buffers:
        names = ", ".join(f"{m}.{b}" if m else b for m, b in stream.buffers)
        warnings.warn(
            f"buffer(s) {names} (stream-wide tables, e.g. a sin-cos position table) now hold the kept channels; a "
            "forward that recomputes such a table for another input size (diffusers' PatchEmbed at another "
            "resolution) builds it at the new width instead of slicing it: run the pruned model at the example's size",
            stacklevel=2,
        )
    summary = {
        "method": "transformer",
        **config.to_dict(),
        **_summary(model, small, blocks, plan, example_inputs),
        **({"ffn_not_pruned": dense_experts} if dense_experts else {}),
        **(
            {"gqa_queries_fallback": fallback} if (fallback := queries_fallback(blocks, plan, config)) else {}
        ),
    }
    if config.reconstruct:
        report = reconstruct_outputs_(model, small, blocks, plan, loader, batches=config.calib_batches)
        summary["reconstruction"] = report
    return small, summary


MAX_SHARE = 0.95


def _plan_for_macs(
    model: nn.Module,
    blocks: Blocks,
    scores: UnitScores,
    config: TransformerPruneConfig,
    width: int,
    inputs: Any,
) -> tuple[TransformerPruneConfig, TransformerPlan, nn.Module]:
    """Bisect one factor on the configured shares: the smallest reaching ``config.mac_target``."""
    shares = {n: getattr(config, n) for n in ("heads", "ffn", "hidden") if getattr(config, n) > 0}
    if not shares:
        raise ConfigError("mac_target needs heads, ffn or hidden above 0: their values set the split")
    base = count_macs(model, inputs)

    seen: dict[str, tuple[float, nn.Module]] = {}  # plans repeat: counts move in whole units

    def trial(factor: float) -> tuple[float, TransformerPruneConfig, TransformerPlan, nn.Module]:
        scaled = {n: min(v * factor, MAX_SHARE) for n, v in shares.items()}
        cfg = dataclasses.replace(config, **scaled)
        plan = plan_transformer_pruning(blocks, scores, cfg, width)
        key = repr((plan.heads, plan.kv_heads, plan.neurons, plan.hidden))
        if key not in seen:
            small = apply_transformer_plan_(copy.deepcopy(model), blocks, plan)
            seen[key] = (base / max(count_macs(small, inputs), 1), small)
        return seen[key][0], cfg, plan, seen[key][1]

    hi = MAX_SHARE / min(shares.values())
    best = trial(hi)
    if best[0] < config.mac_target:
        raise ConfigError(
            f"mac_target={config.mac_target} is out of reach: removing up to {MAX_SHARE:.0%} of "
            f"{', '.join(shares)} leaves {best[0]:.2f}x fewer MACs (prune more kinds of unit, e.g. hidden)"
        )
    _, best = smallest_reaching(trial, lambda found: found[0] >= config.mac_target, hi, best, rounds=14)
    return best[1], best[2], best[3]


def _width(model: nn.Module, blocks: Blocks) -> int:
    try:
        return stream_layers(model, blocks, require_source=False).width
    except UnsupportedModelError:
        return 0


def prune_transformer(
    model: nn.Module,
    example_inputs: Any,
    *,
    heads: float = TransformerPruneConfig.heads,
    ffn: float = TransformerPruneConfig.ffn,
    hidden: float = TransformerPruneConfig.hidden,
    importance: str = TransformerPruneConfig.importance,
    min_heads: int = TransformerPruneConfig.min_heads,
    gqa: str = TransformerPruneConfig.gqa,
    round_to: int = TransformerPruneConfig.round_to,
    calib_batches: int = TransformerPruneConfig.calib_batches,
    ignore: Iterable[str] = (),
    mac_target: float = TransformerPruneConfig.mac_target,
    reconstruct: bool = TransformerPruneConfig.reconstruct,
    allocation: str = TransformerPruneConfig.allocation,
    loader: Any = None,
    config: TransformerPruneConfig | None = None,
) -> nn.Module:
    """Return a physically smaller, verified copy of ``model`` with heads, FFN neurons and stream channels removed.

    ``model`` is left untouched. Keywords are :class:`TransformerPruneConfig`'s fields; ``loader`` gives the
    batches for ``importance="taylor"``/``"wanda"``. The summary comes from
    ``nc.apply(model, TransformerPruneConfig(...), MethodData(example_inputs=...))``.

    Example:
        >>> small = prune_transformer(bert, {"input_ids": ids, "attention_mask": mask}, heads=0.5, ffn=0.5)
        >>> small.bert.encoder.layer[0].attention.self.num_attention_heads
        2
    """
    if config is None:
        config = TransformerPruneConfig.from_dict(
            {
                "heads": heads, "ffn": ffn, "hidden": hidden, "importance": importance, "min_heads": min_heads,
                "gqa": gqa, "round_to": round_to, "calib_batches": calib_batches, "ignore": list(ignore), "mac_target": mac_target,
                "reconstruct": reconstruct, "allocation": allocation,
            },
            where="prune_transformer",
        )  # fmt: skip
    return transformer_prune(model, example_inputs, config, loader=loader)[0]


@register_method("prune", "transformer", config=TransformerPruneConfig)
def transformer(model: nn.Module, config: TransformerPruneConfig, data: MethodData) -> Result:
    """Remove attention heads, FFN neurons and residual-stream channels physically (verified against masking)."""
    data.require("example_inputs", method="prune/transformer")
    small, summary = transformer_prune(model, data.example_inputs, config, loader=data.calibration)
    return Result(model=small, summary=summary)
