"""Fused q|k|v attention read from its traced forward, not from attribute names.

User code fuses the three projections into one Linear and splits its output in ``forward``, in a few forms:

- lucidrains (vit-pytorch): ``self.to_qkv(x).chunk(3, dim=-1)``, then ``rearrange(t, 'b n (h d) -> b h n d',
  h=self.heads)`` on each piece;
- timm / DeiT / Swin: ``self.qkv(x).reshape(B, N, 3, self.num_heads, D).permute(2, 0, 3, 1, 4)``;
- MONAI's ``SABlock``: ``Rearrange('b h (qkv l d) -> qkv b l h d', qkv=3, l=num_heads)`` on ``self.qkv(x)``.

:func:`fused_qkv_layout` finds such a module by its form (one Linear child ``3 * inner`` wide, one output Linear,
possibly first in a ``Sequential``, reading ``inner`` features; or a query Linear and one k|v Linear twice as wide,
``to_kv(context).chunk(2, -1)``: layout ``"q_kv"``), traces its forward on ``(2, 5, dim)`` zero tokens and follows
the fused output to the op that splits it: the order of its factors (3 outer: q|k|v one after the other,
``"packed"``; heads outer: q_h|k_h|v_h head after head, ``"packed_heads"``) and the head count. The module must hold
that head count in an attribute its forward reads (``heads``, ``num_heads``, ...: pruning updates it); every prune
then checks the claim numerically (pruned == masked original).

Example:
    >>> fused_qkv_layout(Attention(dim=32, heads=4, dim_head=8), ("heads",))  # vit-pytorch's
    ('to_qkv', 'to_qkv', 'to_out.0', 'packed', 4, 8)
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from netcompress.evaluation.harness import eval_mode
from netcompress.pruning.graph_tracing import _attributes_restored
from netcompress.quantization.value_tracing import TypeCheckedTracer, trace_with_values

SPLITS = ("chunk", "split", "tensor_split")
RESHAPES = ("reshape", "view", "unflatten")


def _dense_children(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Direct Linear children, and the first item of a ``Sequential`` child (``to_out = Sequential(Linear, Dropout)``)."""
    found = []
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            found.append((name, child))
        elif isinstance(child, nn.Sequential) and len(child) and isinstance(child[0], nn.Linear):
            found.append((f"{name}.0", child[0]))
    return found


def _form(module: nn.Module) -> tuple[str, nn.Linear, str, nn.Linear] | None:
    """(qkv name, qkv, output name, output) when ``module`` has exactly one such pair, else None."""
    dense = _dense_children(module)
    pairs = [
        (qn, q, on, o)
        for qn, q in dense
        for on, o in dense
        if qn != on and "." not in qn and q.out_features % 3 == 0 and o.in_features == q.out_features // 3
    ]
    return pairs[0] if len(pairs) == 1 else None


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def _einops_factors(pattern: str, lengths: dict[str, Any], width: int) -> tuple[list[str], list[int]] | None:
    """The names and sizes of the last input axis's factors in an einops pattern (``'b n (qkv h d) -> ...'``)."""
    left = pattern.split("->")[0]
    groups = re.findall(r"\(([^)]*)\)\s*$", left.strip())
    if not groups:
        return None
    names = groups[0].split()
    known = {n: int(lengths[n]) for n in names if isinstance(lengths.get(n), int)}
    unknown = [n for n in names if n not in known]
    if len(unknown) > 1 or width % math.prod(known.values()):
        return None
    sizes = [known.get(n, width // math.prod(known.values())) for n in names]
    return names, sizes


def _factors(node: fx.Node, root: nn.Module, width: int) -> tuple[list[str], list[int]] | None:
    """How ``node`` splits its input's last axis (``width`` wide) into factors, outermost first, or None."""
    if _name(node) in RESHAPES:
        source, out = _shape(node.args[0]), _shape(node)
        if source is None or out is None or len(out) <= len(source):
            return None
        lead = len(source) - 1
        if out[:lead] != source[:lead] or math.prod(out[lead:]) != width:
            return None
        return [f"a{i}" for i in range(len(out) - lead)], list(out[lead:])
    if node.op == "call_function" and _name(node) == "rearrange":
        pattern = node.args[1] if len(node.args) > 1 else node.kwargs.get("pattern")
        return _einops_factors(pattern, dict(node.kwargs), width) if isinstance(pattern, str) else None
    if node.op == "call_module":
        layer = root.get_submodule(str(node.target))
        if type(layer).__name__ == "Rearrange" and isinstance(getattr(layer, "pattern", None), str):
            return _einops_factors(layer.pattern, dict(getattr(layer, "axes_lengths", {}) or {}), width)
    return None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = [u for u in node.users if not (u.op == "call_function" and _name(u) == "getattr")]
    return users[0] if len(users) == 1 else None


def split_from_graph(
    graph: fx.Graph, root: nn.Module, qkv: str, inner: int, parts: int = 3
) -> tuple[str, int] | str:
    """``(layout, heads)`` of the fused layer ``qkv`` (``parts * inner`` outputs: 3 for q|k|v, 2 for k|v, 1 for a
    lone q) read from ``graph``, or the reason it cannot be (a sentence about the layer's output)."""
    node = next((n for n in graph.nodes if n.op == "call_module" and str(n.target) == qkv), None)
    if node is None:
        return "it is not called in forward"
    user = _only_user(node)
    if user is None:
        return f"its output is read by {len(node.users)} ops, not split by one"
    if parts == 1:
        factors = _factors(user, root, inner)
        if factors is None or len(factors[1]) != 2:
            return "its output is not reshaped into (heads, head size)"
        return "packed", factors[1][0]
    if _name(user) in SPLITS:  # `parts` pieces of `inner` each, then each split into heads
        pieces = user.meta.get("tensor_meta")
        shapes = [tuple(m.shape) for m in pieces] if isinstance(pieces, (tuple, list)) else []
        source = _shape(node)
        if len(shapes) != parts or any(s[-1] != inner or s[:-1] != source[:-1] for s in shapes):
            return f"its {_name(user)} is not {parts} pieces of {inner} along the last axis"
        heads = set()
        for item in [u for u in user.users if _name(u) == "getitem"]:
            split = _only_user(item)
            factors = _factors(split, root, inner) if split is not None else None
            if factors is None or len(factors[1]) != 2:
                return "a piece of its output is not reshaped into (heads, head size)"
            heads.add(factors[1][0])
        if len(heads) != 1:
            return f"its pieces are split into different head counts {sorted(heads)}"
        return "packed", heads.pop()
    factors = _factors(user, root, parts * inner)
    if factors is None or len(factors[1]) != 3:
        return f"its output goes to {_name(user)!r}, not to a split into ({parts}, heads, head size)"
    sizes = factors[1]
    if sizes[0] == parts and sizes[1] != parts:
        return "packed", sizes[1]
    if sizes[1] == parts and sizes[0] != parts:
        return "packed_heads", sizes[0]
    return f"its output is split into factors {sizes}: which factor is q|k|v cannot be told"


def trace_tokens(module: nn.Module, dim: int, context: int | None = None) -> tuple[fx.Graph, nn.Module] | str:
    """Trace ``module``'s forward on ``(2, 5, dim)`` zero tokens (and, for a cross-attention whose forward takes a
    ``context``, ``(2, 7, context)`` zero context tokens) with shapes recorded, or the reason it failed; the module
    is left as it was (training flags, attributes)."""
    like = next(module.parameters())
    x = torch.zeros(2, 5, dim, dtype=like.dtype, device=like.device)
    inputs: Any = x
    if context is not None:
        first = next(iter(inspect.signature(module.forward).parameters))
        inputs = {first: x, "context": torch.zeros(2, 7, context, dtype=like.dtype, device=like.device)}
    what = f"(2, 5, {dim}) tokens" + (f" and (2, 7, {context}) context" if context is not None else "")
    try:  # in eval mode (no BatchNorm statistics touched), every attribute the forward rebinds put back
        with torch.no_grad(), eval_mode(module), _attributes_restored(module):
            graph, root = trace_with_values(module, example_inputs=inputs, tracer_class=TypeCheckedTracer)
            gm = fx.GraphModule(root, graph)
            ShapeProp(gm).propagate(*([x] if context is None else _leading(graph, inputs)))
    except Exception as exc:  # noqa: BLE001 - any failure means "not read from the graph"; the reason is kept
        return f"its forward could not be traced on {what} ({type(exc).__name__}: {exc})"[:300]
    return gm.graph, gm


def _leading(graph: fx.Graph, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """``inputs`` in the order of the graph's leading placeholders (the fixed arguments after them keep their
    defaults)."""
    names = [str(n.target) for n in graph.nodes if n.op == "placeholder"]
    count = next((i for i, n in enumerate(names) if n not in inputs), len(names))
    return [inputs[n] for n in names[:count]]


def _one_head_without_output(module: nn.Module) -> bool:
    """One fused Linear child, no output Linear, and a forward that splits it into ONE head (vit-pytorch's
    ``Attention`` with ``heads=1, dim_head=dim``: ``to_out`` is ``Identity``, as in T2T-ViT's token-to-token
    stage): an attention with no head to remove and no projection to slice."""
    dense = _dense_children(module)
    if len(dense) != 1 or "." in dense[0][0] or dense[0][1].out_features % 3:
        return False
    qn, q = dense[0]
    traced = trace_tokens(module, q.in_features)
    return not isinstance(traced, str) and split_from_graph(*traced, qn, q.out_features // 3) == ("packed", 1)


Found = tuple[str, str, str, str, int, int]  # (q layer, k|v layer, output layer, layout, heads, head size)


def _head_count(module: nn.Module, head_attrs: tuple[str, ...], what: str, heads: int) -> str | None:
    if any(getattr(module, a, None) == heads for a in head_attrs):
        return None
    return f"{what} splits into {heads} heads, but no attribute ({', '.join(head_attrs)}) holds that count for pruning to update"


def _q_kv_layout(module: nn.Module, head_attrs: tuple[str, ...]) -> Found | str | None:
    """A query Linear, a fused k|v Linear twice as wide (``to_kv(context).chunk(2, -1)``: vit-pytorch's CrossViT,
    CaiT, Perceiver-style cross-attention) and an output Linear: layout ``"q_kv"``."""
    dense = _dense_children(module)
    found = [
        (qn, q, kn, on)
        for qn, q in dense
        for kn, kv in dense
        for on, o in dense
        if len({qn, kn, on}) == 3 and "." not in qn + kn
        and kv.out_features == 2 * q.out_features and o.in_features == q.out_features
    ]  # fmt: skip
    if len(found) > 1:  # dim == inner (Conformer): the output layer is the one called after the other two
        found = _output_called_last(module, found)
    if len(found) != 1:
        return None
    qn, q, kn, on = found[0]
    inner, what = q.out_features, f"q layer {qn!r} and fused k|v layer {kn!r} (2 x {q.out_features})"
    kv_in = dict(dense)[kn].in_features
    cross = kv_in != q.in_features and "context" in inspect.signature(module.forward).parameters
    traced = trace_tokens(module, q.in_features, kv_in if cross else None)  # Perceiver: latents x image context
    if isinstance(traced, str):
        return f"{what}: {traced}"
    q_split, kv_split = (split_from_graph(*traced, n, inner, parts=p) for n, p in ((qn, 1), (kn, 2)))
    for name, split in ((qn, q_split), (kn, kv_split)):
        if isinstance(split, str):
            return f"{what}: {name!r}: {split}"
    if kv_split != ("packed", q_split[1]):
        return f"{what}: q splits into {q_split[1]} heads, k|v into {kv_split[1]} ({kv_split[0]})"
    heads = q_split[1]
    if inner % heads:
        return f"{what}: {inner} features are not {heads} heads"
    if (reason := _head_count(module, head_attrs, what, heads)) is not None:
        return reason
    return qn, kn, on, "q_kv", heads, inner // heads


def _output_called_last(module: nn.Module, found: list) -> list:
    """The candidates ``(q, q layer, k|v, output)`` whose output layer the traced forward calls after q and k|v
    (none when it cannot be traced)."""
    traced = trace_tokens(module, found[0][1].in_features)
    if isinstance(traced, str):
        return []
    order = {str(n.target): i for i, n in enumerate(traced[0].nodes) if n.op == "call_module"}
    first = lambda name: order.get(name, -1)  # noqa: E731
    return [f for f in found if first(f[3]) > max(first(f[0]), first(f[2])) >= 0]


def _value_key(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_value_key(v) for v in value))
    try:  # functions, classes, partials: by identity (a deep copy of a module shares them)
        hash(value)
        return value
    except TypeError:
        return type(value)


def structure_key(module: nn.Module) -> tuple:
    """What a trace on zero tokens can depend on: every submodule's class, its scalar attributes (head counts,
    flags) and other attributes' identity or type, and its parameters' and buffers' shapes and dtypes."""
    return tuple(
        (
            name, type(sub),
            tuple((k, _value_key(v)) for k, v in sorted(vars(sub).items()) if not k.startswith("_")),
            tuple((k, tuple(t.shape), t.dtype) for k, t in [*sub._parameters.items(), *sub._buffers.items()]
                  if t is not None),
        )
        for name, sub in module.named_modules()
    )  # fmt: skip


_LAYOUTS: dict[tuple, Any] = {}  # structure_key + head attributes -> fused_qkv_layout's answer (most recent last)
_LAYOUTS_KEPT = 256


def fused_qkv_layout(module: nn.Module, head_attrs: tuple[str, ...]) -> Found | str | bool | None:
    """``(q layer, k|v layer, output layer, layout, heads, head size)`` of a fused-qkv (or q + fused k|v) attention
    module (for fused q|k|v the three names' first two are the one layer), a reason it is not one that can be
    pruned, False for a one-head attention without output projection (nothing to prune, not reported), or None
    when ``module`` does not have that form.

    The answer is kept per module structure (:func:`structure_key`): the pruners call ``find_blocks`` on every
    candidate copy of a model (the head-dim search: 71 calls, 142 traces on a two-layer ViT), and a copy of the
    same structure traces the same."""
    if not _dense_children(module):  # no Linear child: none of the forms (and no key over a whole model's tree)
        return None
    try:
        key = (structure_key(module), head_attrs)
    except Exception:  # noqa: BLE001 - an attribute that cannot be compared: no cache
        return _fused_qkv_layout(module, head_attrs)
    if key in _LAYOUTS:
        _LAYOUTS[key] = _LAYOUTS.pop(key)
        return _LAYOUTS[key]
    found = _LAYOUTS[key] = _fused_qkv_layout(module, head_attrs)
    while len(_LAYOUTS) > _LAYOUTS_KEPT:
        _LAYOUTS.pop(next(iter(_LAYOUTS)))
    return found


def _fused_qkv_layout(module: nn.Module, head_attrs: tuple[str, ...]) -> Found | str | bool | None:
    form = _form(module)
    if form is None:
        if _one_head_without_output(module):
            return False
        return _q_kv_layout(module, head_attrs)
    qn, q, on, _ = form
    inner = q.out_features // 3
    traced = trace_tokens(module, q.in_features)
    if isinstance(traced, str):
        return f"fused q|k|v layer {qn!r} (3 x {inner}): {traced}"
    found = split_from_graph(*traced, qn, inner)
    if isinstance(found, str):
        return f"fused q|k|v layer {qn!r} (3 x {inner}): {found}"
    layout, heads = found
    if inner % heads:
        return f"fused q|k|v layer {qn!r}: {inner} features are not {heads} heads"
    if (reason := _head_count(module, head_attrs, f"fused q|k|v layer {qn!r}", heads)) is not None:
        return reason
    return qn, qn, on, layout, heads, inner // heads


def checked_by_graph(unit: Any, module: nn.Module, head_attrs: tuple[str, ...]) -> Any:
    """A unit matched by names (``qkv``/``proj`` is Hiera's q|k|v but GPT-NeoX-style code writes head after
    head under the same names) takes the split its traced forward shows, where the forward can be read."""
    if unit.layout not in ("packed", "packed_heads") or unit.num_kv_heads != unit.num_heads:
        return unit
    found = fused_qkv_layout(module, head_attrs)
    if not isinstance(found, tuple) or found[0] != found[1] or unit.q != (f"{unit.name}.{found[0]}" if unit.name else found[0]):
        return unit
    layout, heads, head_dim = found[3:]
    if (layout, heads) == (unit.layout, unit.num_heads):
        return unit
    return dataclasses.replace(unit, layout=layout, num_heads=heads, head_dim=head_dim, num_kv_heads=heads)
