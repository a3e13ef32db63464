"""torch.fx tracing that also computes each node's value on an example input.

Plain symbolic tracing fails on ``if x.shape[1] != self.num_channels`` (input validation in
Hugging Face vision models) and on ``int(x.shape[-1])`` (TF "same" padding computed from the
input size): a proxy has no truth value. Here every proxy carries the value its node takes on the
example input, so ``bool``/``int``/``len``/iteration answer concretely and the branch taken on
that input is recorded. Shapes themselves stay symbolic wherever the model only passes them on,
so the batch size is not frozen; what *is* specialised is what the model branched on (input
channels, the image size it pads for), which an exported int8 graph fixes anyway.

Example:
    >>> gm = trace_with_values(model, example_inputs=torch.randn(1, 3, 32, 32), tracer_class=QuantTracer)
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
import operator
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn

from netcompress.quantization.trace_context import (
    isinstance_answered,
    isinstance_check_module,
    no_distribution_validation,
    wrapped_forward_problem,
)

_MISSING = object()
_BUILTIN_LEN = builtins.len
# side-effect free, so safe to drop when unused (setitem and in-place operators are not here)
_PURE_FUNCTIONS = {
    getattr,
    len,
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
    operator.getitem,
    operator.mod,
    operator.floordiv,
    operator.not_,
    operator.and_,
    operator.or_,
}


class ValueProxy(fx.Proxy):
    """A proxy that knows its value on the example input (``_MISSING`` when it could not run)."""

    @property
    def value(self) -> Any:
        return self.node.meta.get("example_value", _MISSING)

    def _concrete(self, what: str) -> Any:
        value = self.value
        if value is _MISSING:
            raise fx.proxy.TraceError(
                f"{what} of {self.node.name} needs a value the example input did not give"
            )
        if isinstance(value, torch.Tensor) or self.node.meta.get("data_dependent"):
            # a branch on tensor *data* differs from input to input: never bake it in
            raise fx.proxy.TraceError(
                f"{what} of {self.node.name} depends on tensor data (data-dependent control flow)"
            )
        return value

    def __bool__(self) -> bool:
        return bool(self._concrete("truth value"))

    def __int__(self) -> int:
        return int(self._concrete("int()"))

    def __index__(self) -> int:
        return int(self._concrete("index"))

    def __float__(self) -> float:
        return float(self._concrete("float()"))

    def __len__(self) -> int:
        value = self.value
        return len(value) if isinstance(value, torch.Tensor) else len(self._concrete("len()"))

    def __iter__(self):  # noqa: ANN204
        return iter([self[i] for i in range(len(self))])

    def __getattr__(self, k: str) -> fx.Proxy:
        # ``b, n, _, h = *x.shape, heads`` (lucidrains' vit-pytorch) unpacks the attribute itself
        return _ValueAttribute(self, k)


class _ValueAttribute(ValueProxy, fx.proxy.Attribute):
    """fx's lazily added attribute read (``x.shape``), answering ``len`` / iteration / ``bool`` from its value."""


_JIT_ISINSTANCE = torch.jit.isinstance


def _proxy_isinstance(obj: Any, target_type: Any) -> bool:
    """``torch.jit.isinstance`` that answers for a traced value from its example value, never a silent False.

    Plain fx hands the proxy to ``torch.jit.isinstance``, which says False for ``(proxy, torch.Tensor)``, so
    ``if skip is not None and torch.jit.isinstance(skip, torch.Tensor)`` (MONAI's U-Net up-sampling) traces
    the branch the model never takes: a graph that crashes or computes something else.
    """
    if not isinstance(obj, fx.Proxy):
        return _JIT_ISINSTANCE(obj, target_type)
    value = obj.value if isinstance(obj, ValueProxy) else _MISSING
    if value is _MISSING:
        raise fx.proxy.TraceError(
            f"torch.jit.isinstance({obj.node.name}, {getattr(target_type, '__name__', target_type)}) needs the "
            "traced value's type (given only by example inputs)"
        )
    return _JIT_ISINSTANCE(value, target_type)


def _einops() -> tuple[tuple[Any, ...], tuple[type, ...]]:
    """einops' functions and layers, kept whole in a graph: they read ``x.ndim`` / ``x.shape`` into a recipe
    cache (a dict keyed by the shape), which a proxy cannot index (``KeyError: Proxy(getattr_2)``)."""
    try:
        import einops
        import einops.layers.torch as layers
    except ImportError:  # einops is not a dependency; models without it need none of this
        return (), ()
    names = ("rearrange", "repeat", "reduce", "einsum", "pack", "unpack")
    functions = tuple(getattr(einops, n) for n in names if hasattr(einops, n))
    return functions, tuple(getattr(layers, n) for n in ("Rearrange", "Reduce", "EinMix") if hasattr(layers, n))


_EINOPS_FUNCTIONS, _EINOPS_LAYERS = _einops()


class TypeCheckedTracer(fx.Tracer):
    """An fx tracer under which ``torch.jit.isinstance`` on a traced value is answered, or fails the trace
    (see :func:`_proxy_isinstance`), and einops calls and layers stay single nodes (see :func:`_einops`);
    every netcompress tracer derives from it.

    Example:
        >>> graph = TypeCheckedTracer().trace(model)
    """

    def __init__(self) -> None:
        super().__init__(autowrap_functions=_EINOPS_FUNCTIONS)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _EINOPS_LAYERS) or super().is_leaf_module(m, module_qualified_name)

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        saved, torch.jit.isinstance = torch.jit.isinstance, _proxy_isinstance
        try:
            with _attributes_kept(root), no_distribution_validation():
                return super().trace(root, concrete_args)
        except ValueError as exc:
            if "co_varnames" not in str(exc):
                raise
            raise fx.proxy.TraceError(wrapped_forward_problem(root)) from exc
        finally:
            torch.jit.isinstance = saved


_SLOTS = ("_parameters", "_buffers", "_modules")


@contextlib.contextmanager
def _attributes_kept(root: Any) -> Iterator[None]:
    """Undo what a traced forward assigned to its modules (``self.mem = mem``: snntorch's neurons keep their
    state so): left in place, a proxy stays in the user's model and breaks every later call on it. The
    attributes fx adds for tensor constants (``_tensor_constant0``, read by the graph) stay."""
    modules = list(root.modules()) if isinstance(root, nn.Module) else []
    before = [(m, dict(m.__dict__), {k: dict(getattr(m, k)) for k in _SLOTS}) for m in modules]
    try:
        yield
    finally:
        for m, attrs, slots in before:
            for key, value in list(m.__dict__.items()):
                if key in attrs and attrs[key] is not value:
                    m.__dict__[key] = attrs[key]
                elif key not in attrs and isinstance(value, fx.Proxy):
                    del m.__dict__[key]
            for key, saved in slots.items():
                now = getattr(m, key)
                if any(now.get(k, _MISSING) is not v for k, v in saved.items()) or now.keys() - saved.keys():
                    now.clear()
                    now.update(saved)


module_state_kept = _attributes_kept  # public: any forward run that must leave the modules as they were


def _value(a: Any, root: nn.Module | None = None) -> Any:
    # create_proxy receives its arguments already turned into graph nodes; a tensor attribute that is no
    # parameter or buffer (a fixed position table) becomes a get_attr node fx adds without create_proxy
    def one(v: Any) -> Any:
        if not isinstance(v, fx.Node):
            return v
        if "example_value" not in v.meta and v.op == "get_attr" and root is not None:
            return _attribute(root, str(v.target))
        return v.meta.get("example_value", _MISSING)

    return fx.node.map_aggregate(a, one)


def _attribute(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            break
    return obj


def _has_missing(a: Any) -> bool:
    found = []
    fx.node.map_aggregate(a, lambda v: found.append(v) if v is _MISSING else v)
    return bool(found)


def value_tracer(tracer_class: type[fx.Tracer]) -> type[fx.Tracer]:
    """``tracer_class`` extended to compute node values (see :func:`trace_with_values`)."""

    class _ValueTracer(tracer_class):  # type: ignore[misc, valid-type]
        example_values: dict[str, Any]
        evaluating = False  # while computing a value, modules run as plain code (no new nodes)

        def call_module(self, m, forward, args, kwargs):  # noqa: ANN001
            if self.evaluating:
                return forward(*args, **kwargs)
            return super().call_module(m, forward, args, kwargs)

        def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
            # ``batch_size = len(q)`` (rtdl's attention): the ``len`` protocol must return an int, which froze
            # the calibration batch's size into every reshape; ``len`` called by name records ``q.size(0)``
            builtins.len = self._len
            try:
                return super().trace(root, concrete_args)
            finally:
                builtins.len = _BUILTIN_LEN

        def _len(self, obj: Any) -> Any:
            value = obj.value if isinstance(obj, ValueProxy) and not self.evaluating else None
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return obj.size(0)
            return _BUILTIN_LEN(obj)

        def getattr(self, attr, attr_val, parameter_proxy_cache):  # noqa: ANN001
            if self.evaluating:
                return attr_val
            return super().getattr(attr, attr_val, parameter_proxy_cache)

        def proxy(self, node: fx.Node) -> fx.Proxy:
            return ValueProxy(node, self)


        def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *a, **kw):  # noqa: ANN001
            proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *a, **kw)
            if isinstance(proxy, ValueProxy):
                node = proxy.node
                node.meta["example_value"] = self._evaluate(kind, target, node.args, node.kwargs)
                # a Python number read out of tensor data (``.item()``) taints what is computed from it
                if (kind == "call_method" and target in ("item", "tolist")) or any(
                    n.meta.get("data_dependent") for n in node.all_input_nodes
                ):
                    node.meta["data_dependent"] = True
            return proxy

        def _evaluate(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
            if kind == "placeholder":
                return self.example_values.get(str(target).lstrip("*"), _MISSING)
            values, kw_values = _value(args, self.root), _value(kwargs, self.root)
            if _has_missing((values, kw_values)):
                return _MISSING
            self.evaluating = True
            try:
                with torch.no_grad():
                    if kind == "call_function":
                        return target(*values, **kw_values)
                    if kind == "call_method":
                        return getattr(values[0], target)(*values[1:], **kw_values)
                    if kind == "call_module":
                        return self.root.get_submodule(target)(*values, **kw_values)
                    if kind == "get_attr":
                        return _attribute(self.root, str(target))
            except Exception:  # the node still traces; only its value is unknown
                return _MISSING
            finally:
                self.evaluating = False
            return _MISSING

    return _ValueTracer


def trace_with_values(
    model: nn.Module, *, example_inputs: Any, tracer_class: type[fx.Tracer]
) -> tuple[fx.Graph, nn.Module]:
    """Trace ``model`` with ``tracer_class`` while computing values on ``example_inputs``.

    ``example_inputs``: a tensor (first argument), a tuple (positional) or a dict (keywords);
    other arguments are fixed to their defaults (``labels=None`` stays None, not a proxy).
    Returns ``(graph, root)``.
    """
    signature = inspect.signature(model.forward)
    if isinstance(example_inputs, dict):
        bound = signature.bind_partial(**example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        bound = signature.bind_partial(*example_inputs)
    else:
        bound = signature.bind_partial(example_inputs)
    given = dict(bound.arguments)
    for name, p in signature.parameters.items():  # no extra arguments: an empty *args / **kwargs
        if name not in given and p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            given[name] = () if p.kind == p.VAR_POSITIONAL else {}
    fixed = {
        name: p.default
        for name, p in signature.parameters.items()
        if name not in given and p.default is not inspect.Parameter.empty
    }
    answered: list[dict[str, Any]] = []  # modules whose isinstance(x, torch.Tensor) checks the example value
    while True:
        tracer = value_tracer(tracer_class)()
        tracer.example_values = given
        try:
            with _unwrapped_forward(model) as unwrapped, isinstance_answered(answered, ValueProxy):
                graph = tracer.trace(model, concrete_args=fixed or None)
            break
        except (AssertionError, TypeError, ValueError) as exc:  # SB3's preprocess_obs: assert isinstance(obs, Tensor)
            found = isinstance_check_module(exc)
            if found is None or any(found is g for g in answered) or len(answered) >= 4:
                raise
            answered.append(found)
    for node in graph.nodes:  # the values were for tracing only; the graph module must not hold them
        node.meta.pop("example_value", None)
        node.meta.pop("data_dependent", None)
    _drop_unused_checks(graph)
    if unwrapped:
        _check_same_outputs(model, fx.GraphModule(tracer.root, graph), bound)
    return graph, tracer.root


def _check_same_outputs(model: nn.Module, traced: nn.Module, bound: inspect.BoundArguments) -> None:
    """The graph traced under a decorated forward must compute what the decorated forward returns."""
    with torch.no_grad():
        want, got = model(*bound.args, **bound.kwargs), traced(*bound.args, **bound.kwargs)
    flat_want, flat_got = (torch.utils._pytree.tree_leaves(o) for o in (want, got))
    same = len(flat_want) == len(flat_got) and all(
        not isinstance(a, torch.Tensor)
        or (isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b))
        for a, b in zip(flat_want, flat_got, strict=True)
    )
    if not same:
        raise fx.proxy.TraceError(
            f"{type(model).__name__}.forward is decorated and its wrapper changes what the inner forward returns"
        )


@contextlib.contextmanager
def _unwrapped_forward(model: nn.Module) -> Iterator[bool]:
    """Trace the function under a decorated ``forward`` (``functools.wraps``), whose names the example
    inputs were bound to: a ``wrapper(self, *args, **kwargs)`` (Hugging Face's ``can_return_tuple``)
    cannot be traced (fx makes ``*args`` one proxy). With the model's default settings such a wrapper
    returns what the inner function returns; :func:`trace_with_values` callers compare the traced
    graph's output with the model's, so a wrapper that did more is caught there."""
    cls = type(model)
    inner = inspect.unwrap(cls.forward)
    if inner is cls.forward:
        yield False
        return
    model.__class__ = type(cls.__name__, (cls,), {"forward": inner, "__module__": cls.__module__})
    try:
        yield True
    finally:
        model.__class__ = cls


def _drop_unused_checks(graph: fx.Graph) -> None:
    """Remove the shape reads and comparisons a branch consumed (they have no users in the graph)."""
    for node in reversed(list(graph.nodes)):
        pure = (node.op == "call_function" and node.target in _PURE_FUNCTIONS) or (
            node.op == "call_method" and node.target in ("size", "dim", "keys", "values", "items")
        )
        if pure and not node.users:
            graph.erase_node(node)
