"""Shared pieces of the exports that write a quantized module as hand-built ONNX Runtime nodes.

``MatMulNBits`` (:mod:`~netcompress.export.onnx_nbits`) and ``GatherBlockQuantized`` /
int8 ``Gather`` (:mod:`~netcompress.export.onnx_embeddings`) are exported the same way:

- a plain object (the *nodes*) holds the constant inputs: signed netcompress codes stored unsigned as
  ``q + 2^(bits-1)`` and packed LSB first along each row (:func:`pack_offset_codes`), scales, optional
  zero points; its ``symbolic(g, x, reference)`` emits the nodes (:func:`contrib_node` for the
  ``com.microsoft`` ones, every tensor input as a ``Constant``, an absent optional input left out);
- a :class:`StandIn` module replaces the quantized module in the copy being exported: it runs the
  PyTorch module (whose output gives the traced value its shape) and hands that to an autograd function
  whose ``symbolic`` is the nodes' own, so the PyTorch nodes are dead in the file;
- :func:`replace_module` swaps it in by name (the root too).

Example:
    >>> pack_rows(np.array([[1, 2, 3]]), 4)            # low nibble first, row padded to whole bytes
    array([[33,  3]], dtype=uint8)
    >>> model = replace_module(model, "encoder.fc", StandIn(model.encoder.fc, nodes))
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from netcompress.core.selection import set_submodule

MS_DOMAIN = "com.microsoft"


def pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``codes`` ``(rows, n)`` at ``bits`` per value, LSB first, each row padded to whole bytes."""
    per_byte = 8 // bits
    rows, n = codes.shape
    pad = (-n) % per_byte
    if pad:
        codes = np.concatenate([codes, np.zeros((rows, pad), dtype=codes.dtype)], axis=1)
    groups = codes.reshape(rows, -1, per_byte).astype(np.uint16)
    shifts = (np.arange(per_byte) * bits).astype(np.uint16)
    return (groups << shifts).sum(axis=2).astype(np.uint8)


def unpack_rows(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`: ``(rows, count)`` unsigned codes (for checking exported files)."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte) * bits
    vals = (packed.astype(np.int64)[..., None] >> shifts) & (2**bits - 1)
    return vals.reshape(packed.shape[0], -1)[:, :count]


def pack_offset_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed ``codes`` ``(rows, n)`` -> uint8 ``(rows, ceil(n * bits / 8))`` holding ``q + 2^(bits-1)``.

    The offset is the zero point ONNX Runtime's block-quantized kernels assume when none is given.
    """
    unsigned = (codes.to(torch.int64) + 2 ** (bits - 1)).numpy()
    return torch.from_numpy(pack_rows(unsigned, bits))


def contrib_node(g: Any, op: str, *inputs: Any, like: Any = None, **attributes: Any) -> Any:
    """A ``com.microsoft::op`` node in the graph ``g`` being exported.

    ``inputs``: graph values or tensors (exported as ``Constant``); trailing ``None`` (absent optional
    inputs) are left out. ``like``: a graph value whose type the output takes (the exporter has no
    shape inference for contrib ops). ``attributes`` use the exporter's suffixes (``bits_i=4``).
    """
    values = list(inputs)
    while values and values[-1] is None:
        values.pop()
    if any(v is None for v in values):
        raise ValueError(f"{MS_DOMAIN}::{op}: only trailing optional inputs can be left out")
    values = [g.op("Constant", value_t=v) if isinstance(v, torch.Tensor) else v for v in values]
    out = g.op(f"{MS_DOMAIN}::{op}", *values, **attributes)
    if like is not None:
        out.setType(like.type())
    return out


class Nodes(Protocol):
    """What a :class:`StandIn` exports: constants and the ``symbolic`` that emits their nodes."""

    def symbolic(self, g: Any, x: Any, reference: Any) -> Any: ...


class _StandInFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, reference: torch.Tensor, nodes: Nodes) -> torch.Tensor:  # noqa: D401
        return reference.clone()

    @staticmethod
    def symbolic(g: Any, x: Any, reference: Any, nodes: Nodes) -> Any:
        return nodes.symbolic(g, x, reference)


class StandIn(nn.Module):
    """Stands in for ``wrapped`` during export: its PyTorch output, ``nodes.symbolic``'s nodes in the file."""

    def __init__(self, wrapped: nn.Module, nodes: Nodes) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.nodes = nodes

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's weight: model code reads it (T5's FFN casts to ``wo.weight.dtype``)."""
        return self.wrapped.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The wrapped layer's bias (``nn.MultiheadAttention`` and Mamba read ``out_proj.bias`` / ``dt_proj.bias``)."""
        return self.wrapped.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _StandInFn.apply(x, self.wrapped(x), self.nodes)


def drop_uncalled(model: nn.Module, info: dict[str, Any], run: Any) -> dict[str, Any]:
    """Move the stand-ins of ``model`` that ``run()`` never calls from ``info["layers"]`` to ``"kept_float"``.

    A parent that reads a layer's ``weight``/``bias`` instead of calling it (``nn.MultiheadAttention``'s
    ``out_proj``, WavLM's q/k/v/out projections, Mamba's ``dt_proj``) computes with the float weight, in
    PyTorch and in the file: the summary must not count that layer as an integer one.

    Example:
        >>> drop_uncalled(model, {"layers": ["self_attn.out_proj"], "kept_float": {}}, lambda: model(x))
        {'layers': [], 'kept_float': {'self_attn.out_proj': 'not called on the example ...'}}
    """
    called: set[str] = set()
    names = {id(m): n for n, m in model.named_modules() if isinstance(m, StandIn)}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: called.add(names[id(mod)]))
        for m in model.modules()
        if isinstance(m, StandIn)
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    for name in [n for n in info["layers"] if n not in called]:
        info["layers"].remove(name)
        info["kept_float"][name] = (
            "not called on the example (its parent reads its weight directly, or a branch skips it): runs in float"
        )
    return info


def replace_module(model: nn.Module, name: str, replacement: nn.Module) -> nn.Module:
    """Put ``replacement`` at ``name`` in ``model`` (IN PLACE); returns the model (``replacement`` for ``""``)."""
    if not name:
        return replacement
    set_submodule(model, name, replacement)
    return model
