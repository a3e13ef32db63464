"""The weight matrices one-shot pruning works on, each seen as ``(out, in)`` with the inputs it multiplies.

A :class:`WeightTarget` is one matrix ``W`` with ``y = x W^T`` (rows of ``x`` = input positions):

- ``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` (weight seen as ``(out, in * kernel)``, inputs unfolded);
- Hugging Face's ``Conv1D`` (GPT-2), whose weight is stored transposed ``(in, out)``: the matrix is
  ``weight.T``, so N:M groups, Wanda's norms and SparseGPT's Hessian run along its input dimension
  (dim 0 of the stored weight) exactly as for a Linear;
- ``nn.MultiheadAttention`` (and :class:`~netcompress.pruning.transformer_mha.PrunedMultiheadAttention`):
  ``in_proj_weight`` as three targets, its query, key and value row blocks, whose inputs are the call's
  ``query``, ``key`` and ``value`` (one tensor in self-attention); separate ``q/k/v_proj_weight``
  (``kdim``/``vdim``) likewise; and ``out_proj``, whose input (the attention's context, before the output
  projection) is recomputed from the call with ``out_proj`` replaced by the identity, since the attention
  reads that weight without calling the module.

Masks are the usual ``<param>_mask`` buffers of :mod:`netcompress.pruning.masks` on the module owning the
parameter. A :class:`SubtreeMaskHook` on the attention module re-applies the masks of everything inside
it before each call, so ``out_proj``'s mask holds through training too. (``nn.TransformerEncoderLayer``'s
fused fast path, which reads the weights without calling the modules, is off while any of its submodules
has a hook: torch checks that, so the masks' hooks keep it on the module-calling path.)

Selection names are the keys of :func:`~netcompress.pruning.masks.sparsity_report`: the module name for a
``weight`` (``"h.0.attn.c_attn"``, ``"0.self_attn.out_proj"``), ``module.param`` otherwise
(``"0.self_attn.in_proj_weight"``).

Example:
    >>> targets, skipped = select_targets(nn.TransformerEncoderLayer(16, 2, 32), None, [], method="demo")
    >>> sorted({t.key for t in targets.values()})
    ['linear1', 'linear2', 'self_attn.in_proj_weight', 'self_attn.out_proj']
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.selection import name_matches
from netcompress.pruning.masks import MASK_SUFFIX, apply_mask, enforce_masks
from netcompress.pruning.transformer_blocks import is_conv1d
from netcompress.pruning.transformer_mha import PrunedMultiheadAttention
from netcompress.quantization.kernel_calls import takes_several_inputs

ATTENTION_TYPES = (nn.MultiheadAttention, PrunedMultiheadAttention)
PARTS = ("query", "key", "value")


class SubtreeMaskHook:
    """Forward pre-hook: re-applies the masks of every module inside this one (stateless, picklable)."""

    def __call__(self, module: nn.Module, args: Any) -> None:
        for child in module.modules():
            enforce_masks(child)


def install_subtree_hook(module: nn.Module) -> None:
    if not any(isinstance(h, SubtreeMaskHook) for h in module._forward_pre_hooks.values()):
        module.register_forward_pre_hook(SubtreeMaskHook())


@dataclasses.dataclass(eq=False)
class WeightTarget:
    """One prunable matrix: where it lives, which call feeds it, and how its inputs become rows.

    ``kind``: ``linear`` | ``conv`` | ``conv1d`` (transposed storage) | ``attn_in`` (a row block of an
    attention's q/k/v projection, fed by the call's ``query``/``key``/``value``) | ``attn_out``.
    """

    name: str  # unique: the key, plus ":query"/":key"/":value" for the row blocks of in_proj_weight
    key: str  # the selection and summary name (sparsity_report's key)
    module: nn.Module  # the module whose call delivers the inputs
    owner: nn.Module  # the module holding the parameter and its mask
    param: str
    kind: str
    part: int | None = None  # 0/1/2: which of query/key/value
    rows_slice: slice | None = None  # rows of the parameter this target owns (packed in_proj_weight)

    @property
    def weight(self) -> torch.Tensor:
        return self.owner._parameters[self.param]

    def matrix(self) -> torch.Tensor:
        """The weight as ``(out, in)`` (detached; for ``conv1d`` the transpose of the stored weight)."""
        w = self.weight.detach()
        if self.kind == "conv1d":
            return w.T
        if self.rows_slice is not None:
            w = w[self.rows_slice]
        return w.reshape(w.shape[0], -1)

    def _to_param(self, matrix: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv1d":
            return matrix.T.contiguous()
        if self.rows_slice is None:
            return matrix.reshape(self.weight.shape)
        full = fill.clone()
        full[self.rows_slice] = matrix.reshape(full[self.rows_slice].shape)
        return full

    def keep(self) -> torch.Tensor | None:
        """The existing mask as a boolean ``(out, in)`` matrix, or None."""
        mask = self.owner._buffers.get(self.param + MASK_SUFFIX)
        if mask is None:
            return None
        if self.kind == "conv1d":
            return mask.T
        if self.rows_slice is not None:
            mask = mask[self.rows_slice]
        return mask.reshape(mask.shape[0], -1)

    def set_keep(self, keep: torch.Tensor) -> None:
        """Mask the weight IN PLACE where the ``(out, in)`` boolean ``keep`` is False (combined with old masks)."""
        ones = torch.ones(self.weight.shape, dtype=torch.bool, device=self.weight.device)
        apply_mask(self.owner, self.param, self._to_param(keep.to(self.weight.device).bool(), ones))
        if self.kind.startswith("attn"):
            install_subtree_hook(self.module)

    @torch.no_grad()
    def set_matrix(self, matrix: torch.Tensor) -> None:
        """Write an updated ``(out, in)`` matrix back into the parameter (in place)."""
        w = self.weight
        w.copy_(self._to_param(matrix.to(device=w.device, dtype=w.dtype), w.detach()))

    def geometry(self) -> tuple[Any, ...]:
        """What decides the rows besides the input tensor: two targets on one tensor with equal geometry share rows."""
        if self.kind == "conv":
            layer = self.module
            return (
                "conv",
                type(layer).__name__,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.dilation,
            )
        return ("linear",) if self.kind != "attn_out" else ("attn_out", id(self.module))

    def source(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The input tensor of a call of ``module`` this target multiplies (its identity groups targets)."""
        if self.kind == "attn_out":
            return None  # the context is computed inside the attention: a group of its own
        if self.kind == "attn_in":
            return _bind(self.module, args, kwargs)[PARTS[self.part]]
        return args[0] if args else next(iter(kwargs.values()), None)

    def rows(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        """The call's input as rows matching :meth:`matrix` columns: ``(positions, in)``."""
        if self.kind == "attn_out":
            x = attention_context(self.module, args, kwargs)
            return x.reshape(-1, x.shape[-1])
        x = self.source(args, kwargs)
        if self.kind == "conv":
            return conv_rows(self.module, x)
        return x.reshape(-1, x.shape[-1])


def _bind(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def conv_rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A convolution's input unfolded into rows ``(positions, in * kernel)`` matching its weight matrix."""
    if isinstance(layer, nn.Conv3d):
        return _conv3d_rows(layer, x)
    if isinstance(layer, nn.Conv1d):  # as a 1 x k 2-D convolution
        x = x.unsqueeze(2)
        kernel, dilation = (1, layer.kernel_size[0]), (1, layer.dilation[0])
        padding, stride = (0, layer.padding[0]), (1, layer.stride[0])
    else:
        kernel, dilation, padding, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    if x.dim() == 3:  # an unbatched call
        x = x.unsqueeze(0)
    columns = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return columns.transpose(1, 2).reshape(-1, columns.shape[1])


def _conv3d_rows(layer: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A Conv3d's input unfolded into ``(positions, in * kd * kh * kw)`` rows (torch has no 3-D ``F.unfold``):
    each spatial dim is padded, then windows of the dilated kernel's span are taken at the stride and every
    ``dilation``-th element kept; columns in the order of ``weight.flatten(1)``."""
    if x.dim() == 4:  # an unbatched call
        x = x.unsqueeze(0)
    pads = [p for pad in reversed(layer.padding) for p in (pad, pad)]
    x = F.pad(x, pads)
    for i, (k, s, d) in enumerate(zip(layer.kernel_size, layer.stride, layer.dilation, strict=True)):
        x = x.unfold(2 + i, (k - 1) * d + 1, s)[..., ::d]  # appends a kernel axis; the window axis stays at 2 + i
    x = x.permute(0, 2, 3, 4, 1, 5, 6, 7)  # (N, D', H', W', C, kd, kh, kw)
    return x.reshape(-1, x.shape[4] * x.shape[5] * x.shape[6] * x.shape[7])


@torch.no_grad()
def attention_context(attn: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """What ``attn.out_proj`` multiplies on this call: the attention's output with ``out_proj`` = identity.

    Example:
        >>> ctx = attention_context(mha, (x, x, x), {"need_weights": False})  # (L, N, E) like the output
    """
    out = attn.out_proj
    weight, bias = out.weight, out.bias
    saved = weight.data, None if bias is None else bias.data
    weight.data = torch.eye(weight.shape[0], weight.shape[1], dtype=weight.dtype, device=weight.device)
    if bias is not None:
        bias.data = torch.zeros_like(bias.data)
    try:
        # forward, not __call__: no hooks (the mask hooks would zero entries of the identity)
        return attn.forward(*args, **kwargs)[0]
    finally:
        weight.data = saved[0]
        if bias is not None:
            bias.data = saved[1]


def _attention_targets(name: str, attn: nn.Module) -> tuple[list[WeightTarget], dict[str, str]]:
    prefix = f"{name}." if name else ""
    targets: list[WeightTarget] = []
    skipped: dict[str, str] = {}
    packed = attn._parameters.get("in_proj_weight")
    if packed is not None:
        size = packed.shape[0] // 3
        for part, label in enumerate(PARTS):
            key = f"{prefix}in_proj_weight"
            rows = slice(part * size, (part + 1) * size)
            targets.append(
                WeightTarget(f"{key}:{label}", key, attn, attn, "in_proj_weight", "attn_in", part, rows)
            )
    else:
        for part, label in enumerate(PARTS):
            param = f"{label[0]}_proj_weight"
            if attn._parameters.get(param) is not None:
                key = f"{prefix}{param}"
                targets.append(WeightTarget(key, key, attn, attn, param, "attn_in", part))
    out = getattr(attn, "out_proj", None)
    if isinstance(attn, nn.MultiheadAttention) and isinstance(out, nn.Linear):
        key = f"{prefix}out_proj"
        targets.append(WeightTarget(key, key, attn, out, "weight", "attn_out"))
    return targets, skipped


def all_targets(model: nn.Module) -> list[WeightTarget]:
    """Every prunable matrix of ``model`` in module order (see the module docstring)."""
    targets: list[WeightTarget] = []
    covered: set[int] = set()  # out_proj of nn.MultiheadAttention: a target of the attention
    for name, module in model.named_modules():
        if isinstance(module, ATTENTION_TYPES):
            found, _ = _attention_targets(name, module)
            targets += found
            if isinstance(module, nn.MultiheadAttention):
                covered.add(id(module.out_proj))
        elif id(module) in covered or module._parameters.get("weight") is None:
            continue
        elif isinstance(module, nn.Linear):
            targets.append(WeightTarget(name, name, module, module, "weight", "linear"))
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            targets.append(WeightTarget(name, name, module, module, "weight", "conv"))
        elif is_conv1d(module):
            targets.append(WeightTarget(name, name, module, module, "weight", "conv1d"))
    return targets


def select_targets(
    model: nn.Module, include: Sequence[str] | None, exclude: Sequence[str], *, method: str
) -> tuple[dict[str, WeightTarget], dict[str, str]]:
    """The selected targets by name, and those set aside with the reason.

    ``include`` (None = all) and ``exclude`` hold keys or ``re:`` patterns; an ``include`` pattern that
    matches nothing, or selecting nothing, is an error naming it / ``method``.

    Example:
        >>> targets, skipped = select_targets(gpt2, None, ["re:.*lm_head"], method="prune/wanda")
    """
    candidates = all_targets(model)
    keys = list(dict.fromkeys(t.key for t in candidates))
    if include is not None:
        for pattern in include:
            if not any(name_matches(k, pattern) for k in keys):
                raise ConfigError(
                    f"layer pattern {pattern!r} matches no Conv1d/2d/3d/Linear/Conv1D/MultiheadAttention "
                    f"weight; layers: {', '.join(keys) or '(none)'}"
                )
    chosen = [
        t
        for t in candidates
        if (include is None or any(name_matches(t.key, p) for p in include))
        and not any(name_matches(t.key, p) for p in exclude)
    ]
    if not chosen:
        raise ConfigError(
            f"{method}: no Conv1d/Conv2d/Conv3d/Linear weight selected (include={include}, exclude={list(exclude)})"
        )
    holders: dict[int, dict[int, str]] = {}  # a parameter held by two modules (tied embeddings)
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p_name, param in module.named_parameters(recurse=False):
            holders.setdefault(id(param), {}).setdefault(id(module), f"{mod_name}.{p_name}".lstrip("."))
    skipped = {}
    for t in chosen:
        shared = holders.get(id(t.weight), {})
        if len(shared) > 1:
            names = ", ".join(shared.values())
            skipped[t.key] = (
                f"weight tied ({names}): a mask would prune every one of them; untie or exclude it"
            )
    return {t.name: t for t in chosen if t.key not in skipped}, skipped


def module_target(name: str, module: nn.Module) -> WeightTarget:
    """The target of a plain Linear / Conv1d / Conv2d / Conv3d / Conv1D module."""
    if is_conv1d(module):
        kind = "conv1d"
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        kind = "conv"
    elif isinstance(module, nn.Linear):
        kind = "linear"
    else:
        raise ConfigError(f"{name}: {type(module).__name__} is not a Conv1d/Conv2d/Conv3d/Linear/Conv1D layer")
    return WeightTarget(name, name, module, module, "weight", kind)


def why_not_calibrated(target: WeightTarget) -> str | None:
    """Why a target's inputs cannot be turned into rows of its matrix (None when they can)."""
    layer = target.module
    if target.kind in ("conv", "linear") and takes_several_inputs(layer):  # pytorchcv's OctConv
        return f"{type(layer).__name__}'s own forward takes several inputs: its input rows are not one matrix"
    if target.kind == "conv":
        if layer.groups != 1:
            return "grouped/depthwise convolution: its input rows are not one matrix"
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            return "convolution padding other than zeros with explicit sizes"
    return None
