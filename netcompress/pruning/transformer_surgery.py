"""Physically remove attention heads, FFN neurons and residual-stream channels from a transformer.

:func:`apply_transformer_plan_` slices a model in place following a :class:`TransformerPlan`:

- heads: the query/key/value rows and output-projection columns of each removed head (key/value heads of
  grouped-query attention likewise), then the attributes the forward reads (``num_heads``,
  ``num_attention_heads``, ``all_head_size``, ``split_size``, ``num_key_value_heads``,
  ``num_key_value_groups``); an ``nn.MultiheadAttention`` becomes a
  :class:`~netcompress.pruning.transformer_mha.PrunedMultiheadAttention`;
- FFN neurons: the rows of the up (and gate) layers and the columns of the down layer;
- hidden width: one channel set everywhere the residual stream is read or written
  (:func:`~netcompress.pruning.transformer_stream.stream_layers`).

Weights shared between layers (GPT-2's tied ``wte``/``lm_head``) are sliced once and stay shared. The
result is checked by ``transformer_verify`` before anyone sees it.

Example:
    >>> plan = TransformerPlan(heads={"self_attn": [0, 2]}, kv_heads={"self_attn": [0, 2]})
    >>> apply_transformer_plan_(layer, find_blocks(layer), plan).self_attn.num_heads
    2
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from netcompress.pruning.transformer_blocks import (
    AttentionUnit,
    Blocks,
    FFNUnit,
    in_out,
    is_dense,
)
from netcompress.pruning.transformer_experts import is_expert_module
from netcompress.pruning.transformer_head_state import (
    all_heads_norms,
    follow_head_state_,
    wrap_all_heads_norm_,
)
from netcompress.pruning.transformer_mha import PrunedMultiheadAttention
from netcompress.pruning.transformer_packed_rows import packed_rows
from netcompress.pruning.transformer_slicing import (  # noqa: F401 - re-exported: the helpers' former home
    _Slicer,
    get_module,
    head_rows,
    set_module,
    slice_dense,
)
from netcompress.pruning.transformer_stream import prune_hidden_, stream_layers


@dataclasses.dataclass
class TransformerPlan:
    """Kept indices: query heads and key/value heads per attention unit, neurons per FFN unit, and the
    residual-stream channels (``hidden=None``: all kept). Units not named keep everything."""

    heads: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    kv_heads: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    neurons: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    hidden: list[int] | None = None
    hidden_width: int = 0


def prune_heads_(
    model: nn.Module,
    unit: AttentionUnit,
    keep_q: list[int],
    keep_kv: list[int],
    slicer: _Slicer,
    *,
    with_projections: bool = True,
    alone_in_block: bool = False,
) -> None:
    """Remove the heads of ``unit`` not in ``keep_q`` (query heads) / ``keep_kv`` (key/value heads).

    ``alone_in_block``: ``unit`` is the only attention module of its parent, whose layer-free children
    may hold per-head tables (:func:`_slice_sibling_head_tables`)."""
    module, d = get_module(model, unit.name), unit.head_dim
    rows = head_rows(keep_q, d)
    if unit.layout == "mha":
        set_module(model, unit.name, PrunedMultiheadAttention.from_attention(module, keep_q))
        return
    if unit.layout.startswith("packed"):
        slice_dense(get_module(model, unit.q), slicer, out=packed_rows(unit, keep_q, keep_kv))
    elif unit.layout == "q_kv":  # a query layer and one k|v layer (k rows, then v rows)
        kv_rows = head_rows(keep_kv, d)
        slice_dense(get_module(model, unit.q), slicer, out=rows)
        slice_dense(get_module(model, unit.k), slicer, out=torch.cat([kv_rows, kv_rows + unit.num_kv_heads * d]))
    else:
        kv_rows, norms = head_rows(keep_kv, d), all_heads_norms(module, unit)
        for side, layer, kept in (("q", unit.q, rows), ("k", unit.k, kv_rows)):
            if side in norms:  # its norm reads every head (OLMo-2): the norm hands on the kept ones
                wrap_all_heads_norm_(module, norms[side], kept)
            else:
                slice_dense(get_module(model, layer), slicer, out=kept)
        slice_dense(get_module(model, unit.v), slicer, out=kv_rows)
    slice_dense(get_module(model, unit.o), slicer, inp=rows)
    _slice_head_parameters(model, unit, keep_q, slicer, with_projections=with_projections)
    if alone_in_block:
        _slice_sibling_head_tables(model, unit, keep_q, slicer)
    follow_head_state_(module, unit, keep_q, keep_kv)


def _slice_head_parameters(
    model: nn.Module, unit: AttentionUnit, keep: list[int], slicer: _Slicer, *, with_projections: bool = True
) -> None:
    """Parameters indexed by query head inside the attention module besides its projections (Swin's and
    BEiT's relative-position bias tables, ``(positions, heads)``): the kept heads along their one dim of
    size ``num_heads``; other Linear layers producing ``num_heads * head_dim`` features keep the kept
    heads' rows (not while the hidden width is pruned too: ``stream_layers`` counts such a layer, as wide as
    the stream, among the stream's writers, and the verification refuses the result). One with several such dims is left as it is; either way ``transformer_verify``
    compares the result with the masked model and names the module if a table was not followed."""
    idx = torch.tensor(keep, dtype=torch.long)
    projections, inner = unit.layers(), unit.num_heads * unit.head_dim
    for sub_name, sub in get_module(model, unit.name).named_modules():
        if ".".join(p for p in (unit.name, sub_name) if p) in projections:
            continue
        if (
            with_projections
            and is_dense(sub)
            and in_out(sub)[1] == inner
            and unit.num_kv_heads == unit.num_heads
        ):
            # another projection into the heads (DeBERTa's pos_key_proj / pos_query_proj of the position embeddings)
            slice_dense(sub, slicer, out=head_rows(keep, unit.head_dim))
            continue
        for attr, param in list(sub.named_parameters(recurse=False)):
            dims = [i for i, n in enumerate(param.shape) if n == unit.num_heads]
            if isinstance(
                sub, nn.Linear
            ):  # its inputs are features, not heads (Swin V2's cpb MLP reads 2 coords)
                dims = [d for d in dims if d == 0]
            if len(dims) == 1:
                slicer(sub, attr, {dims[0]: idx})
        if isinstance(sub, nn.Linear):  # a Linear producing one value per head (Swin V2's position-bias MLP)
            sub.out_features = sub.weight.shape[0]
        if isinstance(sub, nn.modules.conv._ConvNd) and sub.groups == sub.in_channels == unit.num_heads:
            sub.in_channels = sub.out_channels = sub.groups = sub.weight.shape[0]  # per-head (Nystromformer)


def _slice_sibling_head_tables(
    model: nn.Module, unit: AttentionUnit, keep: list[int], slicer: _Slicer
) -> None:
    """Per-head tables beside the attention module (BEiT's per-layer relative-position bias, a child of
    the block that hands its (heads, N, N) output to the attention as the mask): in a sibling holding no
    layer (no Linear, conv, norm or embedding), a parameter with exactly one dim of size ``num_heads``
    keeps the kept heads. A table shared by several blocks' attention (MPNet's encoder-level bias) is
    not a sibling and stays refused by the verification, which names the module."""
    parent_name, _, own_name = unit.name.rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
    layer_types = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.LayerNorm, nn.GroupNorm)
    idx = torch.tensor(keep, dtype=torch.long)
    for name, child in parent.named_children():
        if name == own_name or any(
            isinstance(m, layer_types) or is_dense(m) or is_expert_module(m) for m in child.modules()
        ):  # a mixture-of-experts block: its experts/router index experts (Mixtral: 4 experts, 4 heads)
            continue
        for sub in child.modules():
            for attr, param in list(sub.named_parameters(recurse=False)):
                dims = [i for i, n in enumerate(param.shape) if n == unit.num_heads]
                if len(dims) == 1:
                    slicer(sub, attr, {dims[0]: idx})


def prune_neurons_(model: nn.Module, unit: FFNUnit, keep: list[int], slicer: _Slicer) -> None:
    """Remove the FFN neurons of ``unit`` not in ``keep``."""
    idx = torch.tensor(keep, dtype=torch.long)
    for name in unit.up:
        slice_dense(get_module(model, name), slicer, out=unit.up_rows(idx))
    slice_dense(get_module(model, unit.down), slicer, inp=idx)
    for name in unit.mid:  # a depthwise conv's channel c is neuron c
        conv = get_module(model, name)
        slicer(conv, "weight", {0: idx})
        slicer(conv, "bias", {0: idx})
        conv.in_channels = conv.out_channels = conv.groups = len(keep)
    module = get_module(model, unit.name)
    if getattr(module, "intermediate_size", None) == unit.width:
        module.intermediate_size = len(keep)


def apply_transformer_plan_(model: nn.Module, blocks: Blocks, plan: TransformerPlan) -> nn.Module:
    """Slice ``model`` in place following ``plan`` (``blocks`` found on this same model); returns it."""
    slicer = _Slicer()
    stream = stream_layers(model, blocks) if plan.hidden is not None else None
    parents = [u.name.rpartition(".")[0] for u in blocks.attention]
    for unit, parent in zip(blocks.attention, parents):
        if unit.name in plan.heads and len(plan.heads[unit.name]) < unit.num_heads:
            keep_q, keep_kv = plan.heads[unit.name], plan.kv_heads[unit.name]
            prune_heads_(
                model, unit, keep_q, keep_kv, slicer,
                with_projections=plan.hidden is None, alone_in_block=parents.count(parent) == 1,
            )  # fmt: skip
    for unit in blocks.ffn:
        if unit.name in plan.neurons and len(plan.neurons[unit.name]) < unit.width:
            prune_neurons_(model, unit, plan.neurons[unit.name], slicer)
    if stream is not None and plan.hidden is not None:
        prune_hidden_(model, stream, plan.hidden, slicer)
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "hidden_size", None) == stream.width:
            config.hidden_size = len(plan.hidden)
    return model
