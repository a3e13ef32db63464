"""How much each attention head, FFN neuron and residual-stream channel matters.

Three criteria (higher = more important, the lowest are removed):

- ``"magnitude"``: L2 norm of the unit's weights. A query head: its query rows and output-projection
  columns, plus its key/value head's rows shared over the heads using them; a neuron: its up (and gate) rows
  and down column; a stream channel: every weight that reads or writes it.
- ``"taylor"``: Fisher information of a gate on the unit, ``sum over batches (sum w * dL/dw)^2`` over the
  unit's output weights (the output-projection columns of a head, the down column of a neuron, every weight
  writing a stream channel): ``sum w * dL/dw`` is exactly dL/dm for a gate ``m`` multiplying the unit's
  output at ``m = 1``, i.e. the first-order change of the loss when the unit is removed. Needs labelled
  batches (a HF model given ``labels`` returns its own loss; otherwise cross-entropy / MSE on the output).
- ``"wanda"``: activation-weighted magnitude ``sum |W_ij| * ||X_j||`` over the input columns a unit owns in
  the layer that reads it (output projection for heads, down layer for neurons, every stream reader for
  hidden channels), ``||X_j||`` over the calibration tokens.

Example:
    >>> scores = unit_importance(model, find_blocks(model), "magnitude")
    >>> scores.heads["encoder.layer.0.attention.self"]  # one score per query head
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.inputs import call_model, output_tensor, split_batch
from netcompress.core.registry import Registry
from netcompress.pruning.transformer_blocks import (
    NORM_PAIRS,
    AttentionUnit,
    Blocks,
    FFNUnit,
    is_conv1d,
    kept_heads_norm,
)
from netcompress.pruning.transformer_mha import PrunedMultiheadAttention
from netcompress.pruning.transformer_packed_rows import mp_rows
from netcompress.pruning.transformer_stream import StreamLayers
from netcompress.pruning.transformer_surgery import get_module, set_module

CRITERIA = ("magnitude", "taylor", "wanda")


@dataclasses.dataclass
class UnitScores:
    """Scores per query head (per attention unit), per neuron (per FFN unit) and per stream channel."""

    heads: dict[str, torch.Tensor]
    neurons: dict[str, torch.Tensor]
    hidden: torch.Tensor | None


def _io(weight: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """A dense layer's weight as ``(in, out)``."""
    return weight if is_conv1d(layer) else weight.t()


def attention_weights(model: nn.Module, unit: AttentionUnit) -> tuple[torch.Tensor, ...]:
    """``(q, k, v, o)`` weights, each ``(heads, head_dim, width)``: q/k/v rows and o columns per head."""
    h, kv, d = unit.num_heads, unit.num_kv_heads, unit.head_dim
    inner = h * d
    if unit.layout == "mha":
        module = get_module(model, unit.name)
        q, k, v = module.in_proj_weight.split([inner, inner, inner])
        o = module.out_proj.weight.t()
    else:
        q_layer, o_layer = get_module(model, unit.q), get_module(model, unit.o)
        if unit.layout == "packed":
            q, k, v = _io(q_layer.weight, q_layer).t().split([inner, kv * d, kv * d])
        elif unit.layout == "packed_heads":  # head after head, each q_h | k_h | v_h
            q, k, v = _io(q_layer.weight, q_layer).t().reshape(h, 3, d, -1).unbind(1)
        elif unit.layout == "packed_mp":  # CodeGen: q|v|k per mp_num shard
            w, every = _io(q_layer.weight, q_layer).t(), list(range(h))
            q, v, k = (w[mp_rows(unit, every, part)] for part in range(3))
        elif unit.layout == "q_kv":  # a query layer and one k|v layer
            q = _io(q_layer.weight, q_layer).t()
            k, v = get_module(model, unit.k).weight.split([kv * d, kv * d])
        elif unit.layout == "packed_groups":  # per key/value head: its query heads, k, v (Falcon)
            w = _io(q_layer.weight, q_layer).t().reshape(kv, unit.groups + 2, d, -1)
            q, k, v = w[:, : unit.groups], w[:, -2], w[:, -1]
        else:
            q, k, v = (get_module(model, n).weight for n in (unit.q, unit.k, unit.v))
            module = get_module(model, unit.name)  # OLMo-2 pruned before: the norm hands on kept rows only
            q, k = (
                w if (n := kept_heads_norm(module, names)) is None else w[n.keep]
                for w, names in zip((q, k), NORM_PAIRS)
            )
        o = _io(o_layer.weight, o_layer)
    return q.reshape(h, d, -1), k.reshape(kv, d, -1), v.reshape(kv, d, -1), o.reshape(h, d, -1)


def _head_magnitude(model: nn.Module, unit: AttentionUnit) -> torch.Tensor:
    q, k, v, o = (t.detach().float().pow(2).sum((1, 2)) for t in attention_weights(model, unit))
    shared = (k + v).repeat_interleave(unit.groups) / unit.groups
    return (q + o + shared).sqrt()


def _ffn_in_out(model: nn.Module, unit: FFNUnit) -> tuple[list[torch.Tensor], torch.Tensor]:
    ups = [_io(get_module(model, n).weight, get_module(model, n)).t() for n in unit.up]  # (width, in)
    ups = [part for u in ups for part in u.split(unit.width)]  # a packed gate | up: each half
    down = get_module(model, unit.down)
    return ups, _io(down.weight, down)  # down: (width, out)


def _neuron_magnitude(model: nn.Module, unit: FFNUnit) -> torch.Tensor:
    ups, down = _ffn_in_out(model, unit)
    total = sum(u.detach().float().pow(2).sum(1) for u in ups) + down.detach().float().pow(2).sum(1)
    return total.sqrt()


def stream_tensors(model: nn.Module, stream: StreamLayers) -> list[tuple[torch.Tensor, int]]:
    """Every parameter touching a stream channel, with the dimension indexing the channel."""
    found: list[tuple[torch.Tensor, int]] = []
    for name in stream.readers:
        layer = get_module(model, name)
        found.append((layer.weight, 0 if is_conv1d(layer) else 1))
    for name in stream.writers:
        layer = get_module(model, name)
        found.append((layer.weight, 1 if is_conv1d(layer) else 0))
        if getattr(layer, "bias", None) is not None:
            found.append((layer.bias, 0))
    for name in stream.attention:
        attn = get_module(model, name)
        found += [(attn.in_proj_weight, 1), (attn.out_proj.weight, 0)]
    found += [(get_module(model, n).weight, 1) for n in stream.embeddings]
    found += [(get_module(model, n).weight, 0) for n in stream.convs]
    for name, pname in stream.params:
        param = getattr(get_module(model, name), pname)
        found.append((param, param.dim() - 1))
    return found


def _per_channel(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    t = tensor.movedim(dim, 0)
    return t.reshape(t.shape[0], -1).sum(1)


def _magnitude(model: nn.Module, blocks: Blocks, stream: StreamLayers | None) -> UnitScores:
    heads = {u.name: _head_magnitude(model, u) for u in blocks.attention}
    neurons = {u.name: _neuron_magnitude(model, u) for u in blocks.ffn}
    hidden = None
    if stream is not None:
        hidden = sum(
            _per_channel(t.detach().float().pow(2), d) for t, d in stream_tensors(model, stream)
        ).sqrt()
    return UnitScores(heads, neurons, hidden)


def batch_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The loss of one labelled batch: a HF model's own loss when it takes ``labels``, else CE / MSE."""
    inputs, targets = split_batch(batch)
    if targets is None:
        raise ConfigError(
            "importance='taylor' needs labelled batches (inputs, targets) or a dict with 'labels'"
        )
    if isinstance(inputs, dict) and "labels" in inspect.signature(model.forward).parameters:
        loss = getattr(model(**inputs, labels=targets), "loss", None)
        if loss is not None:
            return loss
    out = output_tensor(call_model(model, inputs))
    if targets.is_floating_point():
        return F.mse_loss(out, targets)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1))


def _batches(loader: Any, count: int, what: str) -> list[Any]:
    if loader is None:
        raise ConfigError(f"importance={what!r} needs data: a calibration or training loader")
    batches = list(itertools.islice(iter(loader), count))
    if not batches:
        raise ConfigError(f"importance={what!r}: the data loader gave no batches")
    return batches


def _taylor(
    model: nn.Module, blocks: Blocks, stream: StreamLayers | None, loader: Any, count: int
) -> UnitScores:
    work = copy.deepcopy(model).train(False)
    heads = {u.name: torch.zeros(u.num_heads) for u in blocks.attention}
    neurons = {u.name: torch.zeros(u.width) for u in blocks.ffn}
    hidden = torch.zeros(stream.width) if stream is not None else None
    for batch in _batches(loader, count, "taylor"):
        work.zero_grad(set_to_none=True)
        batch_loss(work, batch).backward()
        with torch.no_grad():
            for u in blocks.attention:
                o = attention_weights(work, u)[3]
                heads[u.name] += (o * _o_grad(work, u)).sum((1, 2)).float().cpu() ** 2
            for u in blocks.ffn:
                down = get_module(work, u.down)
                wg = _io(down.weight * _grad(down.weight), down)
                neurons[u.name] += wg.sum(1).float().cpu() ** 2
            if hidden is not None and stream is not None:
                gate = sum(_per_channel(t * _grad(t), d) for t, d in stream_tensors(work, stream))
                hidden += gate.float().cpu() ** 2
    return UnitScores(heads, neurons, hidden)


def _grad(param: torch.Tensor) -> torch.Tensor:
    return param.grad if param.grad is not None else torch.zeros_like(param)


def _o_grad(model: nn.Module, unit: AttentionUnit) -> torch.Tensor:
    layer = get_module(model, unit.name).out_proj if unit.layout == "mha" else get_module(model, unit.o)
    return _io(_grad(layer.weight), layer).reshape(unit.num_heads, unit.head_dim, -1)


class _ColumnNorms:
    """Forward pre-hooks summing the squares of each input channel of named layers."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.handles = [get_module(model, n).register_forward_pre_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], *_: Any) -> None:
            x = args[0].detach().float()
            sq = x.reshape(-1, x.shape[-1]).pow(2).sum(0).cpu()
            self.sums[name] = self.sums[name] + sq if name in self.sums else sq

        return hook

    def norm(self, name: str, width: int) -> torch.Tensor:
        return self.sums[name].sqrt() if name in self.sums else torch.zeros(width)


def _wanda(
    model: nn.Module, blocks: Blocks, stream: StreamLayers | None, loader: Any, count: int
) -> UnitScores:
    work = copy.deepcopy(model).eval()
    for u in blocks.attention:  # nn.MultiheadAttention calls out_proj functionally; this one as a module
        if u.layout == "mha" and isinstance(get_module(work, u.name), nn.MultiheadAttention):
            attn = get_module(work, u.name)
            set_module(work, u.name, PrunedMultiheadAttention.from_attention(attn, list(range(u.num_heads))))
    o_names = {u.name: f"{u.name}.out_proj" if u.layout == "mha" else u.o for u in blocks.attention}
    readers = [*stream.readers, *stream.attention] if stream is not None else []
    names = list(dict.fromkeys([*o_names.values(), *(u.down for u in blocks.ffn), *readers]))
    norms = _ColumnNorms(work, names)
    try:
        with torch.no_grad():
            for batch in _batches(loader, count, "wanda"):
                call_model(work, split_batch(batch)[0])
    finally:
        for handle in norms.handles:
            handle.remove()
    heads = {}
    for u in blocks.attention:
        o = attention_weights(work, u)[3].detach().float().abs()  # (heads, d, out)
        x = norms.norm(o_names[u.name], u.num_heads * u.head_dim).reshape(u.num_heads, u.head_dim, 1)
        heads[u.name] = (o * x).sum((1, 2))
    neurons = {}
    for u in blocks.ffn:
        down = _ffn_in_out(work, u)[1].detach().float().abs()  # (width, out)
        neurons[u.name] = (down * norms.norm(u.down, u.width)[:, None]).sum(1)
    hidden = None
    if stream is not None:
        hidden = torch.zeros(stream.width)
        for name in stream.readers:
            layer = get_module(work, name)
            w = _io(layer.weight, layer).detach().float().abs()  # (in, out)
            hidden += (w * norms.norm(name, stream.width)[:, None]).sum(1)
        for name in stream.attention:
            w = get_module(work, name).in_proj_weight.detach().float().abs()  # (3 inner, in)
            hidden += (w * norms.norm(name, stream.width)[None, :]).sum(0)
    return UnitScores(heads, neurons, hidden)


IMPORTANCE: Registry[Any] = Registry("transformer importance")
IMPORTANCE.register(
    "magnitude", lambda model, blocks, stream, loader, count: _magnitude(model, blocks, stream)
)
IMPORTANCE.register("taylor", _taylor)
IMPORTANCE.register("wanda", _wanda)


def unit_importance(
    model: nn.Module, blocks: Blocks, importance: str, *, stream: StreamLayers | None = None,
    loader: Any = None, batches: int = 4,
) -> UnitScores:  # fmt: skip
    """Scores of every head, neuron and (with ``stream``) stream channel under ``importance``."""
    if importance not in CRITERIA:
        raise ConfigError(f"importance={importance!r} is not one of {list(CRITERIA)}")
    return IMPORTANCE.get(importance)(model, blocks, stream, loader, batches)
