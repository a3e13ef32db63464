"""What an attention module's forward reads besides its projections, followed when heads are pruned.

Slicing the q/k/v/o rows is not enough when the forward reads a head count or a per-head quantity from
somewhere else. :func:`follow_head_state_` (called by ``transformer_surgery.prune_heads_`` after the
projections are sliced) updates, per attention module:

- its own attributes: ``num_heads``/``num_attention_heads``/..., key/value head counts, ``all_head_size``/
  ``split_size``/``inner_dim``, ``num_key_value_groups``;
- a ``config`` it reads head counts from (Phi-3's ``self.config.num_attention_heads``): the module gets
  its own shallow copy with the kept counts (the model's config, shared by every layer, is left alone);
- ALiBi slopes computed per CONFIG head by the model and handed to every layer (BLOOM's ``alibi`` argument,
  ``(batch * heads, 1, keys)``; MPT's ``position_bias``, ``(heads, 1, keys)``): an :class:`AlibiHeads` forward
  pre-hook keeps the kept heads' rows, so each kept head keeps its own slope;
- CodeGen's ``mp_num`` layout (q|v|k interleaved over ``mp_num`` shards): the surgery writes the kept rows
  as one shard, so ``mp_num`` becomes 1 and ``embed_dim`` (read only to size a shard) the kept width;
- einops ``Rearrange`` children built with the head count (MONAI's ``SABlock``): rebuilt with the kept count;
- a q/k norm over ALL heads at once (OLMo-2's ``q_norm``/``k_norm``, RMSNorm over ``heads * head_dim``):
  its statistic reads every head, so the projection keeps every head's rows and the norm is wrapped in
  :class:`KeptHeadsNorm`, which normalises the full width and hands on the kept heads' channels.

Every result is still compared with the masked original by ``transformer_verify``.

Example:
    >>> hook = AlibiHeads([0, 2], 4)
    >>> hook(None, (), {"alibi": torch.arange(8.0).view(8, 1, 1)})[1]["alibi"].flatten().tolist()
    [0.0, 2.0, 4.0, 6.0]
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn

from netcompress.pruning.transformer_blocks import HEAD_ATTRS, KV_ATTRS, AttentionUnit

NORM_NAMES = (("q_norm", "k_norm"), ("q_layernorm", "k_layernorm"))


class AlibiHeads:
    """Forward pre-hook (with kwargs) keeping heads ``keep`` (of ``num_heads`` config heads) of the
    ``alibi`` argument, shaped ``(batch * num_heads, ...)`` head-minor as BLOOM builds it, or of MPT's
    ``position_bias`` argument, shaped ``(num_heads, queries, keys)`` (``name="position_bias"``: only a 3-d
    tensor of ``num_heads`` rows is sliced; any other is handed on as it is and the prune's check judges it)."""

    name = "alibi"  # hooks saved before ``name`` existed load with BLOOM's argument

    def __init__(
        self, keep: list[int], num_heads: int, position: int | None = None, name: str = "alibi"
    ) -> None:
        self.keep = [int(h) for h in keep]
        self.num_heads = int(num_heads)
        self.position = position  # index in args when alibi is passed positionally
        self.name = name

    def select(self, alibi: torch.Tensor) -> torch.Tensor:
        if self.name == "position_bias" and (alibi.dim() != 3 or alibi.shape[0] != self.num_heads):
            return alibi
        per_head = alibi.reshape(-1, self.num_heads, *alibi.shape[1:])
        idx = torch.tensor(self.keep, dtype=torch.long, device=alibi.device)
        return per_head.index_select(1, idx).reshape(-1, *alibi.shape[1:])

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if isinstance(kwargs.get(self.name), torch.Tensor):
            kwargs = {**kwargs, self.name: self.select(kwargs[self.name])}
        elif (
            self.position is not None
            and len(args) > self.position
            and isinstance(args[self.position], torch.Tensor)
        ):
            args = (*args[: self.position], self.select(args[self.position]), *args[self.position + 1 :])
        return args, kwargs


class KeptHeadsNorm(nn.Module):
    """A norm over all heads' channels at once, then only the kept channels ``keep`` handed on."""

    def __init__(self, norm: nn.Module, keep: torch.Tensor) -> None:
        super().__init__()
        self.norm = norm
        self.register_buffer("keep", keep.clone().long())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x).index_select(-1, self.keep)


def all_heads_norms(module: nn.Module, unit: AttentionUnit) -> dict[str, str]:
    """``{"q": child, "k": child}``: children normalising all (query / key) heads at once (OLMo-2)."""
    children = dict(module.named_children())
    widths = {"q": unit.num_heads * unit.head_dim, "k": unit.num_kv_heads * unit.head_dim}
    heads = {"q": unit.num_heads, "k": unit.num_kv_heads}
    found: dict[str, str] = {}
    for names in NORM_NAMES:
        for side, name in zip(("q", "k"), names):
            norm = children.get(name)
            weight = getattr(norm, "weight", None)
            full = isinstance(weight, torch.Tensor) and weight.shape == (widths[side],) and heads[side] > 1
            if full or isinstance(norm, KeptHeadsNorm):  # or pruned before
                found[side] = name
    return found


def wrap_all_heads_norm_(module: nn.Module, child: str, rows: torch.Tensor) -> None:
    """Make ``module.child`` normalise every head and hand on the channels ``rows`` (of what it hands on
    now) only; ``find_blocks`` reads the handed-on width as the heads' width."""
    norm = getattr(module, child)
    if isinstance(norm, KeptHeadsNorm):  # pruned before: ``rows`` index its kept channels
        norm.keep = norm.keep[rows.to(norm.keep.device)]
    else:
        setattr(module, child, KeptHeadsNorm(norm, rows))


def _own_config(module: nn.Module, unit: AttentionUnit, n_q: int, n_kv: int) -> None:
    config = getattr(module, "config", None)
    if config is None or isinstance(config, (nn.Module, torch.Tensor, dict)):
        return
    heads = [a for a in HEAD_ATTRS if getattr(config, a, None) == unit.num_heads]
    kvs = [a for a in KV_ATTRS if getattr(config, a, None) == unit.num_kv_heads]
    if not heads and not kvs:
        return
    own = copy.copy(config)  # the model's config stays shared by the unpruned layers
    for attr in heads:
        setattr(own, attr, n_q)
    for attr in kvs:
        setattr(own, attr, n_kv)
    module.config = own


def _alibi_hook(module: nn.Module, unit: AttentionUnit, keep_q: list[int]) -> None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, AlibiHeads):  # pruned before: keep_q indexes its kept heads
            hook.keep = [hook.keep[h] for h in keep_q]
            return
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return
    # BLOOM's ``alibi``; MPT's ``position_bias`` (ALiBi, per config head; a 4-d one, T5's, is handed on as it is)
    name = next((n for n in ("alibi", "position_bias") if n in params), None)
    if name is not None:
        hook = AlibiHeads(keep_q, unit.num_heads, params.index(name), name)
        module.register_forward_pre_hook(hook, with_kwargs=True)


def _rearrange_layers_(module: nn.Module, unit: AttentionUnit, n_q: int) -> None:
    """einops ``Rearrange`` children built with the head count as an axis length (MONAI's ``SABlock``:
    ``Rearrange('b h (qkv l d) -> qkv b l h d', qkv=3, l=num_heads)``) are rebuilt with the kept count; one
    with several axes of that length is left as it is (the prune's check then names the block)."""
    for name, child in list(module.named_children()):
        lengths = getattr(child, "axes_lengths", None)
        if type(child).__name__ != "Rearrange" or not isinstance(lengths, dict):
            continue
        axes = [a for a, n in lengths.items() if n == unit.num_heads]
        if len(axes) == 1:
            setattr(module, name, type(child)(child.pattern, **{**lengths, axes[0]: n_q}))


def follow_head_state_(module: nn.Module, unit: AttentionUnit, keep_q: list[int], keep_kv: list[int]) -> None:
    """Update what ``module``'s forward reads about its heads after its projections kept ``keep_q`` /
    ``keep_kv`` (see the module docstring)."""
    n_q, n_kv = len(keep_q), len(keep_kv)
    _own_config(module, unit, n_q, n_kv)
    _alibi_hook(module, unit, keep_q)
    _rearrange_layers_(module, unit, n_q)
    for attr in HEAD_ATTRS:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, n_q)
    for attr in KV_ATTRS:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, n_kv)
    for attr in ("all_head_size", "split_size", "inner_dim"):
        if getattr(module, attr, None) == unit.num_heads * unit.head_dim:
            setattr(module, attr, n_q * unit.head_dim)
    if isinstance(getattr(module, "num_key_value_groups", None), int):
        module.num_key_value_groups = n_q // n_kv
    if unit.layout == "packed_mp":  # CodeGen: the kept rows are one shard q|v|k
        module.mp_num = 1
        module.embed_dim = n_q * unit.head_dim
