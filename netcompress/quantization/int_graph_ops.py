"""Graph ops between int8 quantizers computed as ONNX Runtime's int8 kernels do (``QLinearAdd``,
``QLinearGlobalAveragePool``), for :func:`netcompress.quantization.int_arithmetic.match_int8_kernels_`.

In a traced fake-quant model an add of two quantized values, or a global average pooling of one,
feeding a quantizer is computed in float32 and then quantized; ONNX Runtime computes it on the codes
with float32 ratios of the scales, and the two round differently near a tie. A global average
pooling over 2x2 values lands exactly on ties (sums / 4): 2 % of the pooled codes of EfficientNet-Lite0
differed. :func:`integer_adds_` / :func:`integer_pools_` replace those nodes with :class:`Int8Add` /
:class:`Int8GlobalAvgPool`, which compute what the int8 kernel computes in eval mode with frozen
quantizers and the plain op otherwise (export traces the plain op, so the ONNX graph is unchanged).

Example:
    >>> integer_adds_(gm), integer_pools_(gm)
    (9, 1)
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from netcompress.quantization.fake_quant import FakeQuantize
from netcompress.quantization.tracing import is_pass_through, module_of


def static_per_tensor(q: Any) -> bool:
    return (
        isinstance(q, FakeQuantize)
        and q.quantizing
        and not q.dynamic
        and q.bits <= 8
        and q.spec.granularity == "per_tensor"
    )


def source_quantizer(gm: fx.GraphModule, value: Any) -> FakeQuantize | None:
    """The static per-tensor quantizer whose output ``value`` is (through grid-keeping ops), or None."""
    if not isinstance(value, fx.Node):
        return None
    cur = value
    while not isinstance(module_of(gm, cur), FakeQuantize) and is_pass_through(gm, cur):
        if not cur.args or not isinstance(cur.args[0], fx.Node):
            return None
        cur = cur.args[0]
    q = module_of(gm, cur)
    return q if static_per_tensor(q) else None


def _frozen(*qs: FakeQuantize) -> bool:
    return all(q.quantizing and not q.observing and not q.dynamic for q in qs)


def tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


class Int8Add(nn.Module):
    """``a + b`` that, in eval with frozen quantizers, computes as ONNX Runtime's ``QLinearAdd``.

    ``a`` and ``b`` are outputs of static per-tensor quantizers, the sum goes to ``output_q``:
    ``clamp(round((q_b - z_b) * (s_b / s_y) + ((q_a - z_a) * (s_a / s_y) + z_y)))``, float32 multiply-adds, returned
    on the output grid. Traced (export), in training or while a quantizer observes it is ``a + b``.
    The quantizers are plain attributes (the model holds them where they were).

    Example:
        >>> add = Int8Add(q_a, q_b, q_y); y = add(q_a(a), q_b(b))
    """

    def __init__(self, input_a: FakeQuantize, input_b: FakeQuantize, output_q: FakeQuantize) -> None:
        super().__init__()
        self.__dict__["quantizers"] = (input_a, input_b, output_q)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        qa, qb, qy = self.__dict__["quantizers"]
        if self.training or tracing() or not _frozen(qa, qb, qy):
            return a + b
        with torch.no_grad():
            s_a, s_b, s_y = (q.scale.detach().abs().float().reshape(()) for q in (qa, qb, qy))
            z_y = qy.zero_point.reshape(()).float()
            # ONNX Runtime's fused multiply-adds, fma(r_b, q_b, fma(r_a, q_a, z_y)) in float32 (other
            # orders flipped 107 of 1.6M codes): float32 products are exact in float64, one rounding
            ratio_a, ratio_b = (s_a / s_y).double(), (s_b / s_y).double()
            inner = (torch.round(a / s_a).double() * ratio_a + z_y.double()).float()
            total = (torch.round(b / s_b).double() * ratio_b + inner.double()).float()
            qmin, qmax = qy.spec.quant_range
            codes = torch.clamp(torch.round(total), qmin, qmax)
            return (codes - z_y) * s_y


_ADD_TARGETS = (operator.add, torch.add, "add")


def integer_adds_(gm: fx.GraphModule) -> int:
    """Replace each add between quantizers (see :class:`Int8Add`) in ``gm``, IN PLACE; returns the count."""
    count = 0
    for node in list(gm.graph.nodes):
        module = module_of(gm, node)
        if isinstance(module, Int8Add):
            count += 1
            continue
        if node.op not in ("call_function", "call_method") or node.target not in _ADD_TARGETS:
            continue
        if len(node.args) != 2 or node.kwargs or len(node.users) != 1:
            continue
        qa, qb = source_quantizer(gm, node.args[0]), source_quantizer(gm, node.args[1])
        qy = module_of(gm, next(iter(node.users)))
        if qa is None or qb is None or not static_per_tensor(qy):
            continue
        target = f"int8_add.{node.name}"
        gm.add_submodule(target, Int8Add(qa, qb, qy))
        with gm.graph.inserting_after(node):
            replacement = gm.graph.call_module(target, tuple(node.args))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


class Int8GlobalAvgPool(nn.Module):
    """A global average pooling (``AdaptiveAvgPool`` to 1) computed as ``QLinearGlobalAveragePool``.

    Its input is ``input_q``'s output and its output reaches ``output_q`` through grid-keeping ops:
    ``clamp(round(sum(q_x - z_x) * (s_x / s_y / N)) + z_y)`` in float32, returned on the output grid
    (``N`` values per channel). Traced, in training or while a quantizer observes: ``pool(x)``.

    Example:
        >>> pool = Int8GlobalAvgPool(nn.AdaptiveAvgPool2d(1), q_x, q_y); y = pool(q_x(x))
    """

    def __init__(self, pool: nn.Module, input_q: FakeQuantize, output_q: FakeQuantize) -> None:
        super().__init__()
        self.pool = pool
        self.__dict__["quantizers"] = (input_q, output_q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qx, qy = self.__dict__["quantizers"]
        if self.training or tracing() or not _frozen(qx, qy) or x.dim() < 3:
            return self.pool(x)
        with torch.no_grad():
            s_x, s_y = (q.scale.detach().abs().float().reshape(()) for q in (qx, qy))
            z_y = qy.zero_point.reshape(()).float()
            dims = tuple(range(2, x.dim()))
            count = 1
            for d in dims:
                count *= x.shape[d]
            total = torch.round(x / s_x).double().sum(dim=dims, keepdim=True).float()  # exact integers
            qmin, qmax = qy.spec.quant_range
            codes = torch.clamp(torch.round(total * (s_x / s_y / count)) + z_y, qmin, qmax)
            return (codes - z_y) * s_y


def _global_pool(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The pooling module of a global average pooling node (one value per channel), else None."""
    module = module_of(gm, node)
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        size = module.output_size
        return module if all(s == 1 for s in (size if isinstance(size, tuple) else (size,))) else None
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d and not node.kwargs:
        size = node.args[1] if len(node.args) > 1 else None
        if size == 1 or size == (1, 1) or size == [1, 1]:
            return nn.AdaptiveAvgPool2d(1)
    return None


def _quantizer_after(gm: fx.GraphModule, node: fx.Node) -> FakeQuantize | None:
    """The static per-tensor quantizer ``node``'s only consumer chain of grid-keeping ops ends in."""
    cur = node
    while len(cur.users) == 1:
        user = next(iter(cur.users))
        q = module_of(gm, user)
        if isinstance(q, FakeQuantize):
            return q if static_per_tensor(q) else None
        if not is_pass_through(gm, user) or not user.args or user.args[0] is not cur:
            return None
        cur = user
    return None


def integer_pools_(gm: fx.GraphModule) -> int:
    """Replace each global average pooling between quantizers (see :class:`Int8GlobalAvgPool`), IN PLACE."""
    count = 0
    for node in list(gm.graph.nodes):
        if isinstance(module_of(gm, node), Int8GlobalAvgPool):
            count += 1
            continue
        pool = _global_pool(gm, node)
        if pool is None or not node.args:
            continue
        qx, qy = source_quantizer(gm, node.args[0]), _quantizer_after(gm, node)
        if qx is None or qy is None:
            continue
        target = f"int8_pool.{node.name}"
        gm.add_submodule(target, Int8GlobalAvgPool(pool, qx, qy))
        with gm.graph.inserting_after(node):
            replacement = gm.graph.call_module(target, (node.args[0],))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return count
