"""What a netcompress tracer sets up around a trace, and how it explains a forward fx cannot bind.

:func:`no_distribution_validation`: ``torch.distributions`` objects check their arguments on tensor data
(``Categorical(logits=...)``: ``constraint.check(value).all()``), a branch no trace can take; the check only
raises on invalid arguments, so it is off while tracing (an SB3 actor-critic builds its action distribution in
forward). :func:`isinstance_answered`: a library function that checks its input's type (Stable-Baselines3's
``preprocess_obs``: ``assert isinstance(obs, th.Tensor)``) fails on a traced value; when a value trace fails on a
line calling ``isinstance`` in a module outside torch and netcompress (:func:`isinstance_check_module`), that
module's ``isinstance`` is shadowed for the next attempt by one that answers for a traced value from its example
value. Only that module's Python code sees it (a module global); the proxy itself is unchanged, so torch's C++
type checks still see a proxy. :func:`wrapped_forward_problem`: the message for fx's "co_varnames is too small".
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
import linecache
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

_MISSING = object()


_ISINSTANCE = builtins.isinstance


def isinstance_check_module(exc: BaseException) -> dict[str, Any] | None:
    """The globals of the module whose line raised ``exc`` if that line calls ``isinstance`` and the module is not
    torch's or netcompress' own; else None."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return None
    frame = tb.tb_frame
    name = str(frame.f_globals.get("__name__", ""))
    line = linecache.getline(frame.f_code.co_filename, tb.tb_lineno)
    if "isinstance(" not in line or name.split(".")[0] in ("torch", "netcompress", "builtins"):
        return None
    return frame.f_globals


@contextlib.contextmanager
def isinstance_answered(modules: list[dict[str, Any]], proxy_type: type) -> Iterator[None]:
    """In each module of ``modules`` (their globals), ``isinstance(x, cls)`` of a ``proxy_type`` proxy carrying
    an example value answers for that value."""

    def answered(obj: Any, cls: Any) -> bool:
        if _ISINSTANCE(obj, proxy_type):
            value = obj.node.meta.get("example_value")
            if _ISINSTANCE(value, torch.Tensor):
                return _ISINSTANCE(value, cls)
        return _ISINSTANCE(obj, cls)

    saved = [(g, g.get("isinstance", _MISSING)) for g in modules]
    for g in modules:
        g["isinstance"] = answered
    try:
        yield
    finally:
        for g, old in saved:
            if old is _MISSING:
                g.pop("isinstance", None)
            else:
                g["isinstance"] = old


@contextlib.contextmanager
def no_distribution_validation() -> Iterator[None]:
    """``torch.distributions`` argument validation off (what ``Distribution.set_default_validate_args`` sets)."""
    saved = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(saved)


def wrapped_forward_problem(root: Any) -> str:
    """What fx's "code: co_varnames is too small" means: fx binds the arguments of the function under a
    ``functools.wraps`` decorator to the wrapper's own code, which has fewer local names (a ``wrapper(*args,
    **kwargs)`` over a forward of many parameters: transformers' ``deprecate_kwarg``, ``can_return_tuple``)."""
    fn = type(root).forward if isinstance(root, nn.Module) else root
    owner = f"{type(root).__name__}.forward" if isinstance(root, nn.Module) else getattr(fn, "__qualname__", "")
    inner = inspect.unwrap(fn)
    if inner is fn or not hasattr(fn, "__code__"):
        return f"torch.fx cannot bind the arguments of {owner or fn!r} (code: co_varnames is too small)"
    code = fn.__code__  # the wrapper's own code (functools.wraps copied the forward's names onto it)
    wrapper = f"{fn.__globals__.get('__name__', '?')}.{getattr(code, 'co_qualname', code.co_name)}"
    child = next((n for n, _ in root.named_children()), None) if isinstance(root, nn.Module) else None
    where = f" (such as {child!r})" if child else ""
    return (
        f"{owner} is wrapped by the decorator {wrapper}, whose (*args, **kwargs) torch.fx cannot bind the "
        f"{len(inspect.signature(inner).parameters)} parameters of the forward under it to; pass example_inputs "
        f"(the forward under the decorator is then traced and checked against the model's output) or apply this "
        f"to a submodule whose forward is not decorated{where}"
    )
