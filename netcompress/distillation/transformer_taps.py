"""Where a transformer's per-layer states are read during distillation: hidden states, attention scores, values.

:class:`TransformerTaps` finds a model's layers from its attention blocks (``pruning.transformer_blocks``:
``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer``, Hugging Face BERT/ViT-style q/k/v ``Linear``
layouts, hand-written blocks, and head-dim-pruned attention from ``nc.prune_head_dims``: every head is kept,
so its maps line up with the teacher's) and puts forward hooks on them, so the states are captured by the forward
the training loop runs anyway (no second forward, gradients flow for the student):

- ``hidden(0)`` is the input of the first layer (the embedding output), ``hidden(i)`` the output of layer i;
- ``attention_scores(i)`` are the masked pre-softmax scores ``q k^T * scale + mask``, shape (N, H, L, S),
  recomputed from the captured query/key projections. They never include attention dropout (a model's own
  ``output_attentions`` maps do in training mode and need ``set_attn_implementation("eager")``);
  :meth:`verify_attention` checks the recomputation against the block's real output (the input of its
  output projection), so a block with rotary or relative-position terms is an error naming it;
- ``values(i)``: the value projections, (N, S, width), for MiniLM's value relation.

A layer kept in a ModuleList / ModuleDict the model never calls (vit-pytorch, rtdl: the loop calls the blocks
inside) is read from its children (:mod:`netcompress.distillation.looped_layers`); :meth:`resolve`, after a
forward, finds which form of the residual stream every layer boundary confirms, or refuses naming the layer.

Example:
    >>> taps = TransformerTaps(model, who="student")
    >>> model(**batch); taps.hidden(taps.num_layers).shape, taps.attention_scores(1).shape
    >>> taps.close()
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.adapters import adapter_hint
from netcompress.core.errors import UnsupportedModelError
from netcompress.distillation.looped_layers import LoopedCalls, adjacent, differs, stream_form
from netcompress.pruning.transformer_blocks import AttentionUnit, find_blocks
from netcompress.pruning.transformer_head_dim import HeadDimAttention

MASK_KWARGS = ("attention_mask", "attn_mask", "mask")


class _Slots:
    """Captured tensors of one model (transient: never pickled or deep-copied with the model)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"values": {}}


class _SaveOutput:
    def __init__(self, slots: _Slots, key: str) -> None:
        self.slots, self.key = slots, key

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.slots.values[self.key] = _first_tensor(output)


class _SaveCall:
    """Forward pre-hook (with kwargs) keeping a module's call arguments."""

    def __init__(self, slots: _Slots, key: str) -> None:
        self.slots, self.key = slots, key

    def __call__(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.slots.values[self.key] = (args, kwargs)


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return getattr(output, "last_hidden_state", None)


def _arg(args: tuple, kwargs: dict, index: int, names: tuple[str, ...]) -> Any:
    for name in names:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return args[index] if len(args) > index else None


def _fits(t: Any, scores: tuple[int, ...]) -> bool:
    """Whether ``t`` is a tensor of at most 4 dims that broadcasts to the ``scores`` shape."""
    if not isinstance(t, torch.Tensor) or not 2 <= t.dim() <= 4:
        return False
    try:
        return torch.broadcast_shapes(t.shape, scores) == torch.Size(scores)
    except RuntimeError:
        return False


def _additive(mask: torch.Tensor, dtype: torch.dtype, *, true_means_masked: bool) -> torch.Tensor:
    if mask.dtype == torch.bool:
        blocked = mask if true_means_masked else ~mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            blocked, torch.finfo(dtype).min
        )
    return mask.to(dtype).clamp_min(torch.finfo(dtype).min)


def _layer_of(name: str, modules: dict[str, nn.Module]) -> str:
    """The nearest ancestor of ``name`` held in an ``nn.ModuleList`` (a transformer layer), else its parent.

    Where that ancestor's container is itself an entry of a ModuleList (vit-pytorch's CaiT:
    ``layers = ModuleList([ModuleList([LayerScale(attention), LayerScale(ff)])])``), the layer is the container:
    the wrapper around the attention returns the attention branch, not the residual stream."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[: cut - 1])
        if isinstance(modules.get(parent), nn.ModuleList):
            if cut > 1 and isinstance(modules.get(".".join(parts[: cut - 2])), nn.ModuleList):
                return parent
            return ".".join(parts[:cut])
    return ".".join(parts[:-1])


def _head_dim_unit(name: str, module: HeadDimAttention) -> AttentionUnit:
    """An ``"mha"`` unit of a head-dim-pruned attention (``head_dim`` stays the source's: it sets the scale)."""
    heads = module.num_heads
    return AttentionUnit(name, "mha", heads, module.head_dim, heads, name, name, name, name)


def _qkv_widths(attn: nn.Module, head_dim: int) -> tuple[int, int]:
    """Query/key and value channels per head of an ``in_proj``-packed attention (fewer after head-dim pruning)."""
    return getattr(attn, "qk_dim", head_dim), getattr(attn, "v_dim", head_dim)


class TransformerTaps:
    """Forward hooks on every transformer layer of ``model`` (``who`` names it in errors)."""

    def __init__(self, model: nn.Module, *, who: str) -> None:
        self.model, self.who = model, f"{who} {type(model).__name__}"
        config = getattr(model, "config", None)  # LayerDrop (M2M100, time-series transformers) skips layers
        self.layer_drop = {
            k: v for k in ("layerdrop", "encoder_layerdrop", "decoder_layerdrop") if (v := getattr(config, k, 0) or 0)
        }
        modules = dict(model.named_modules())
        blocks = find_blocks(model)
        # a head-dim-pruned nn.MultiheadAttention keeps every head (fewer channels in each): the pruner does
        # not take it as a block (it cannot be pruned again), the distiller reads it like the original
        head_dim = [_head_dim_unit(n, m) for n, m in modules.items() if isinstance(m, HeadDimAttention)]
        self.units: dict[str, list[AttentionUnit]] = {}
        for unit in sorted([*blocks.attention, *head_dim], key=lambda u: list(modules).index(u.name)):
            self.units.setdefault(_layer_of(unit.name, modules), []).append(unit)
        self.layer_names = list(self.units)
        # a ModuleList/ModuleDict per layer (vit-pytorch, x-transformers, rtdl) is never called: the model calls
        # its blocks one by one, so no module returns the layer's output; hooks on its children read the stream
        self.uncalled = [n for n in self.layer_names if isinstance(modules[n], (nn.ModuleList, nn.ModuleDict))]
        self.unknown = {n: r for n, r in blocks.unknown.items() if n not in {u.name for u in head_dim}}
        self.slots = _Slots()
        self._handles: list[Any] = []
        looped = {i: n for i, n in enumerate(self.layer_names, start=1) if n in self.uncalled}
        self.looped = LoopedCalls(self.slots, looped, modules) if looped else None
        self.stream_form: str | None = None  # of looped layers: set by resolve() on a real forward
        if self.looped is not None:
            self._handles.extend(self.looped.handles)
            self._hook(model.register_forward_pre_hook(self.looped.reset, with_kwargs=True, prepend=True))
        for i, layer_name in enumerate(self.layer_names, start=1):
            layer = modules[layer_name]
            if layer_name not in self.uncalled:
                self._hook(layer.register_forward_pre_hook(_SaveCall(self.slots, f"in{i}"), with_kwargs=True))
                self._hook(layer.register_forward_hook(_SaveOutput(self.slots, f"out{i}")))
            unit = self.units[layer_name][0]
            if unit.layout == "linear":
                for part in ("q", "k", "v"):
                    target = modules[getattr(unit, part)]
                    self._hook(target.register_forward_hook(_SaveOutput(self.slots, f"{part}{i}")))
                attn = modules[unit.name]
                self._hook(
                    attn.register_forward_pre_hook(_SaveCall(self.slots, f"attn{i}"), with_kwargs=True)
                )
                out = modules[unit.o]
                self._hook(out.register_forward_pre_hook(_SaveCall(self.slots, f"o{i}"), with_kwargs=True))
            elif unit.layout == "mha" and not isinstance(layer, nn.TransformerEncoderLayer):
                attn = modules[unit.name]
                self._hook(
                    attn.register_forward_pre_hook(_SaveCall(self.slots, f"attn{i}"), with_kwargs=True)
                )

    def _hook(self, handle: Any) -> None:
        self._handles.append(handle)

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    def require_layers(self) -> None:
        if not self.layer_names:
            extra = f" (unrecognised attention modules: {', '.join(self.unknown)})" if self.unknown else ""
            extra += adapter_hint(self.model)
            raise UnsupportedModelError(
                f"{self.who}: no transformer layer found (no attention block the distiller recognises){extra}"
            )

    def require_attention(self, layer: int) -> None:
        """Raise UnsupportedModelError naming the model and block unless layer ``layer`` exposes attention."""
        name = self.layer_names[layer - 1]
        units = self.units[name]
        if len(units) > 1:
            raise UnsupportedModelError(
                f"{self.who}: layer {name!r} holds {len(units)} attention blocks "
                f"({', '.join(u.name for u in units)}); attention distillation reads one self-attention per layer: "
                "use hidden-state distillation only (attention_weight=0, value_weight=0)"
            )
        if units[0].layout not in ("linear", "mha"):
            raise UnsupportedModelError(
                f"{self.who}: attention maps of {units[0].name!r} ({units[0].layout} q|k|v layout) are not available; "
                "use hidden-state distillation only (attention_weight=0, value_weight=0)"
            )

    def clear(self) -> None:
        self.slots.values.clear()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def captured(self, index: int) -> bool:
        """Whether layer ``index`` (0: the first layer's input) ran in the last forward (LayerDrop skips some)."""
        if self.looped is not None and max(index, 1) in self.looped.layers:
            return self.looped.ran(max(index, 1))
        return (f"in{max(index, 1)}" if index == 0 else f"out{index}") in self.slots.values

    def skips_layers(self) -> bool:
        """True while the model may skip layers at random (LayerDrop in training mode)."""
        return bool(self.layer_drop) and self.model.training

    def resolve(self) -> None:
        """After a forward: find where looped layers keep the residual stream (refused by name if nowhere) and
        check that a called layer returns what the next layer of its container receives."""
        if self.looped is not None and self.stream_form is None:
            self.stream_form = stream_form(self.looped, who=self.who)
        modules, values = dict(self.model.named_modules()), self.slots.values
        for i, (a, b) in enumerate(zip(self.layer_names, self.layer_names[1:]), start=1):
            call = values.get(f"in{i + 1}")
            following = _arg(*call, 0, ("hidden_states", "src", "x")) if call else None
            if adjacent(a, b, modules) and differs(values.get(f"out{i}"), following):
                raise UnsupportedModelError(
                    f"{self.who}: layer {a!r} ({type(modules[a]).__name__}) returns something other than the input "
                    f"of the next layer {b!r} (the residual is added outside it?), so its output is not the "
                    "residual stream hidden-state distillation reads; distill its logits instead (nc.distill_)"
                )

    def _looped_hidden(self, index: int) -> torch.Tensor | None:
        if self.stream_form is None:
            raise UnsupportedModelError(f"{self.who}: looped layers are read only after resolve() on a forward")
        try:
            if index == 0:
                return self.looped.first_input(1)
            return self.looped.stream(index, self.stream_form)
        except KeyError:
            raise UnsupportedModelError(
                f"{self.who}: layer {self.layer_names[max(index, 1) - 1]!r} did not run in the last forward"
            ) from None

    def _get(self, key: str) -> Any:
        try:
            return self.slots.values[key]
        except KeyError:
            drop = f"; its config drops layers at random in training ({self.layer_drop})" if self.layer_drop else ""
            raise UnsupportedModelError(
                f"{self.who}: nothing was captured for {key!r} in the last forward "
                f"(the layer was not called through its module, or the model did not run{drop})"
            ) from None

    def hidden(self, index: int) -> torch.Tensor:
        """Layer ``index``'s output (``0``: the first layer's input, the embedding output)."""
        if self.looped is not None and max(index, 1) in self.looped.layers:
            out = self._looped_hidden(index)
            if out is None:
                raise UnsupportedModelError(f"{self.who}: layer {self.layer_names[index - 1]!r} returned no tensor")
            return out
        if index == 0:
            args, kwargs = self._get("in1")
            return _arg(args, kwargs, 0, ("hidden_states", "src", "x"))
        out = self._get(f"out{index}")
        if out is None:
            raise UnsupportedModelError(
                f"{self.who}: layer {self.layer_names[index - 1]!r} returned no tensor"
            )
        return out

    def _unit(self, index: int) -> AttentionUnit:
        return self.units[self.layer_names[index - 1]][0]

    def _mha_qkv(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(q, k, v) as (N, H, L, d) and the additive mask for an nn.MultiheadAttention-style block."""
        unit, layer = self._unit(index), self.model.get_submodule(self.layer_names[index - 1])
        attn = self.model.get_submodule(unit.name)
        if isinstance(layer, nn.TransformerEncoderLayer):  # its fused fast path never calls self_attn
            args, kwargs = self._get(f"in{index}")
            src = _arg(args, kwargs, 0, ("src",))
            x = layer.norm1(src) if layer.norm_first else src
            query = key = x
            attn_mask = _arg(args, kwargs, 1, ("src_mask",))
            pad = _arg(args, kwargs, 2, ("src_key_padding_mask",))
            causal = bool(kwargs.get("is_causal", False))
            batch_first = layer.self_attn.batch_first
        else:
            args, kwargs = self._get(f"attn{index}")
            query, key = _arg(args, kwargs, 0, ("query",)), _arg(args, kwargs, 1, ("key",))
            pad = _arg(args, kwargs, 3, ("key_padding_mask",))
            attn_mask = kwargs.get("attn_mask", args[5] if len(args) > 5 else None)
            causal = bool(kwargs.get("is_causal", False))
            batch_first = attn.batch_first
        if not batch_first:
            query, key = query.transpose(0, 1), key.transpose(0, 1)
        n, lq, ls, h = query.shape[0], query.shape[1], key.shape[1], unit.num_heads
        d, d_v = _qkv_widths(attn, unit.head_dim)
        sizes = [h * d, h * d, h * d_v]
        w_q, w_k, w_v = attn.in_proj_weight.split(sizes)
        b_q, b_k, b_v = attn.in_proj_bias.split(sizes) if attn.in_proj_bias is not None else (None, None, None)
        q = F.linear(query, w_q, b_q).view(n, lq, h, d).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(n, ls, h, d).transpose(1, 2)
        v = F.linear(key, w_v, b_v)
        mask = None
        if attn_mask is None and causal:
            attn_mask = torch.ones(lq, ls, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = _additive(attn_mask, q.dtype, true_means_masked=True)
            if mask.dim() == 3:
                mask = mask.view(n, -1, lq, ls)
                if mask.shape[1] != h and hasattr(attn, "head_index"):
                    mask = mask[:, attn.head_index]
        if pad is not None:
            padding = _additive(pad, q.dtype, true_means_masked=True).view(n, 1, 1, ls)
            mask = padding if mask is None else mask + padding
        return q, k, v, mask

    def _linear_qk(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        unit = self._unit(index)
        q, k = self._get(f"q{index}"), self._get(f"k{index}")
        n, lq, ls, d = q.shape[0], q.shape[1], k.shape[1], unit.head_dim
        q = q.view(n, lq, -1, d).transpose(1, 2)
        k = k.view(n, ls, -1, d).transpose(1, 2)
        if k.shape[1] != q.shape[1]:  # grouped-query attention: each key head serves `groups` query heads
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        args, kwargs = self._get(f"attn{index}")
        mask = next((kwargs[m] for m in MASK_KWARGS if kwargs.get(m) is not None), None)
        if (
            mask is None
        ):  # the first later positional tensor shaped like the scores (MobileBERT: q, k, v, mask)
            mask = next((a for a in args[1:] if _fits(a, (n, q.shape[1], lq, ls))), None)
        # Hugging Face masks: additive floats (eager) or booleans where True means attend (sdpa)
        return q, k, None if mask is None else _additive(mask, q.dtype, true_means_masked=False)

    def _scale(self, index: int) -> float:
        unit = self._unit(index)
        attn = self.model.get_submodule(unit.name)
        scale = getattr(attn, "scaling", None) if unit.layout == "linear" else None
        return float(scale) if isinstance(scale, (int, float)) else unit.head_dim**-0.5

    def attention_scores(self, index: int) -> torch.Tensor:
        """Masked pre-softmax attention scores of layer ``index`` (1-based): (N, heads, L, S), float32."""
        if self._unit(index).layout == "mha":
            q, k, _, mask = self._mha_qkv(index)
        else:
            q, k, mask = self._linear_qk(index)
        scores = (q.float() @ k.float().transpose(-2, -1)) * self._scale(index)
        return scores if mask is None else scores + mask.float()

    def values(self, index: int) -> torch.Tensor:
        """Value projections of layer ``index`` (1-based): (N, S, width)."""
        if self._unit(index).layout == "mha":
            return self._mha_qkv(index)[2]
        return self._get(f"v{index}")

    def verify_attention(self, index: int) -> None:
        """Check (on the last forward, in eval mode) that softmax(scores) @ v is what the block fed its
        output projection; raise UnsupportedModelError naming the block otherwise."""
        unit = self._unit(index)
        if unit.layout != "linear":
            return  # nn.MultiheadAttention's computation is known exactly
        try:
            probs = self.attention_scores(index).softmax(-1)
        except RuntimeError as exc:  # a mask not shaped like the scores (Longformer's sliding-window mask)
            why = f"attention mask does not fit its (N, heads, L, S) scores ({str(exc).splitlines()[0]})"
            raise UnsupportedModelError(f"{self.who}: {unit.name!r}: {why}; use attention_weight=0 and value_weight=0") from exc
        v = self._get(f"v{index}")
        n, ls, d = v.shape[0], v.shape[1], unit.head_dim
        v = v.view(n, ls, -1, d).transpose(1, 2).float()
        if v.shape[1] != probs.shape[1]:
            v = v.repeat_interleave(probs.shape[1] // v.shape[1], dim=1)
        context = (probs @ v).transpose(1, 2).reshape(n, probs.shape[2], -1)
        args, kwargs = self._get(f"o{index}")
        actual = _arg(args, kwargs, 0, ("input", "hidden_states")).float()
        if actual.shape != context.shape or not torch.allclose(context, actual, rtol=1e-3, atol=1e-4):
            raise UnsupportedModelError(
                f"{self.who}: attention maps of {unit.name!r} cannot be read from its query/key projections "
                "(softmax(q k^T / sqrt(d) + mask) @ v differs from what the block computes: rotary or "
                "relative-position terms?); use attention_weight=0 and value_weight=0"
            )
