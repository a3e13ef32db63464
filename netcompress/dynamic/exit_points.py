"""Where exits go: :func:`add_early_exits` traces a model with ``torch.fx`` and cuts it into segments.

A cut may follow any module the forward calls once, inside a residual block too: each segment
hands the next every value still needed after the cut (the cut's own output first, then e.g. a
block's input waiting for its skip connection), so a cut after ``layer1.0.conv1`` of a ResNet
passes ``(conv1 output, block input)`` on. A point the tracer cannot split at (a module called
twice, one inside a module the tracer keeps whole, a value crossing the cut that is not a
per-sample tensor such as ``x.size(0)``) is refused by name.

Example::

    ee = add_early_exits(resnet, exits=["layer1.0.conv1", "layer2"], example_inputs=x[:1])
    ee.train()(x)                           # [head 0 logits, head 1 logits, final logits]
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.fx as fx
from torch import nn

from netcompress.core.config import check_choice
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.dynamic.early_exit import EarlyExitModel, as_state
from netcompress.dynamic.exit_ensemble import cascade_heads
from netcompress.dynamic.exit_heads import HEADS
from netcompress.evaluation.harness import eval_mode
from netcompress.quantization.value_tracing import TypeCheckedTracer, trace_with_values


class _ExitTracer(TypeCheckedTracer):
    """Keeps the exit layers whole (leaves), so an exit may name a block such as ``layer2``."""

    def __init__(self, exits: set[str]) -> None:
        super().__init__()
        self.exits = exits

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.exits or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, exits: Sequence[str], example_inputs: torch.Tensor) -> fx.GraphModule:
    """Plain fx first; when that fails, again with values on ``example_inputs`` (branches on shapes and on
    ``torch.jit.isinstance`` resolve as on that input; see :mod:`netcompress.quantization.value_tracing`)."""
    tracer = _ExitTracer(set(exits))
    try:
        graph = tracer.trace(model)  # first: the tracer has no ``root`` before it traced
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises several types for data-dependent code
        error = f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc})"

    class _Bound(_ExitTracer):
        def __init__(self) -> None:
            super().__init__(set(exits))

    try:
        graph, root = trace_with_values(model, example_inputs=example_inputs, tracer_class=_Bound)
    except Exception as exc2:
        raise UnsupportedModelError(
            f"{error}; with values on the example input: {type(exc2).__name__}: {exc2}; "
            f"early exits at {list(exits)} need a traceable forward"
        ) from exc2
    for node in graph.nodes:  # string annotations break pickling the GraphModule
        node.type = None
    return fx.GraphModule(root, graph, type(model).__name__)


def _input_dependent(nodes: Sequence[fx.Node]) -> set[fx.Node]:
    """The nodes computed from the input (the rest are weights/constants, copied where used)."""
    dependent: set[fx.Node] = set()
    for node in nodes:
        if node.op == "placeholder" or any(a in dependent for a in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _find_cut(nodes: Sequence[fx.Node], name: str) -> fx.Node:
    found = [n for n in nodes if n.op == "call_module" and n.target == name]
    if len(found) > 1:
        raise UnsupportedModelError(f"exit {name!r}: that module runs {len(found)} times per forward")
    if found:
        return found[0]
    called = [str(n.target) for n in nodes if n.op == "call_module"]
    outer = [c for c in called if name.startswith(c + ".")]
    if outer:
        raise UnsupportedModelError(
            f"exit {name!r} lies inside {outer[0]!r}, which torch.fx keeps whole (a leaf module); "
            f"attach the exit after {outer[0]!r}"
        )
    raise ConfigError(f"exit {name!r}: the model's forward never calls a module of that name")


def _cut_nodes(gm: fx.GraphModule, exits: Sequence[str]) -> list[fx.Node]:
    """The graph nodes after which to cut, in execution order."""
    nodes = list(gm.graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedModelError(f"early exits need a model with one input; it takes {len(placeholders)}")
    output = next(n for n in nodes if n.op == "output")
    dependent = _input_dependent(nodes)
    cuts = []
    for name in exits:
        node = _find_cut(nodes, name)
        if node in output.all_input_nodes:
            raise ConfigError(f"exit {name!r} is the model's last layer; an exit there saves nothing")
        if node not in dependent:
            raise UnsupportedModelError(f"exit {name!r}: that module's output does not depend on the input")
        cuts.append(node)
    return sorted(cuts, key=order.__getitem__)


def _live_after(nodes: Sequence[fx.Node], cut: fx.Node, dependent: set[fx.Node]) -> list[fx.Node]:
    """The cut's value, then every input-dependent value computed so far and used after the cut."""
    order = {node: i for i, node in enumerate(nodes)}
    position = order[cut]
    live = [
        n
        for n in nodes[: position + 1]
        if n is not cut and n in dependent and any(order[u] > position for u in n.users)
    ]
    return [cut, *live]


def _split(gm: fx.GraphModule, cuts: list[fx.Node]) -> tuple[list[fx.GraphModule], list[list[fx.Node]]]:
    """One GraphModule per segment and the values each hands on (its state).

    Segment 0 takes the model's input; segment k takes segment k-1's state as positional
    arguments and returns its own state (one tensor, or a tuple whose first item feeds the head).
    """
    nodes = list(gm.graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    dependent = _input_dependent(nodes)
    states = [_live_after(nodes, cut, dependent) for cut in cuts]
    bounds = [order[c] for c in cuts] + [len(nodes) - 1]
    segments, start = [], 0
    for k, end in enumerate(bounds):
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        if k > 0:
            for i, node in enumerate(states[k - 1]):
                env[node] = graph.placeholder("x" if i == 0 else f"state{i}")

        def lookup(node: fx.Node, graph: fx.Graph = graph, env: dict = env) -> fx.Node:
            if node not in env:  # a weight or constant: copied into each segment that uses it
                env[node] = graph.node_copy(node, lookup)
            return env[node]

        for node in nodes[start : end + 1]:
            if node in dependent or node.op == "output":
                env[node] = graph.node_copy(node, lookup)
        if k < len(cuts):
            outs = [env[n] for n in states[k]]
            graph.output(outs[0] if len(outs) == 1 else tuple(outs))
        graph.lint()
        segments.append(fx.GraphModule(gm, graph, f"Segment{k}"))
        start = end + 1
    return segments, states


def _state_shapes(
    segments: Sequence[nn.Module],
    states: Sequence[Sequence[fx.Node]],
    names: Sequence[str],
    example: torch.Tensor,
) -> list[tuple[int, ...]]:
    """Run a batch of 3 copies of the example: each state must be per-sample tensors.

    Returns the shape of each segment's first output (a head's input; the last: the logits).
    """
    batch = 3
    state: tuple = (example[:1].expand(batch, *example.shape[1:]).clone(),)
    shapes = []
    with eval_mode(nn.ModuleList(segments)), torch.no_grad():
        for k, segment in enumerate(segments):
            state = as_state(segment(*state))
            crossing = states[k] if k < len(states) else [None]
            for node, value in zip(crossing, state):
                if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
                    where = f"exit {names[k]!r}" if k < len(names) else "the model's output"
                    what = f"the value {node.name!r} ({node.op} {node.target})" if node is not None else "it"
                    raise UnsupportedModelError(
                        f"{where}: {what} crosses this point and is not a per-sample tensor "
                        f"(got {type(value).__name__}"
                        f"{'' if not isinstance(value, torch.Tensor) else ' of shape ' + str(tuple(value.shape))}"
                        "); the tracer cannot split there: choose another exit point"
                    )
            shapes.append(tuple(state[0].shape[1:]))
    return shapes


def head_kinds(head: str | Sequence[str], exits: list[str]) -> dict[str, str]:
    """``{exit name: head kind}`` from one kind for all exits or one kind per exit (checked)."""
    if isinstance(head, str):
        kinds = [head] * len(exits)
    elif isinstance(head, Sequence) and all(isinstance(k, str) for k in head):
        kinds = list(head)
    else:
        raise ConfigError(f"head={head!r} must be a head name or one head name per exit")
    if len(kinds) != len(exits):
        raise ConfigError(f"head names {len(kinds)} kinds for {len(exits)} exits {exits}: give one, or one per exit")
    for kind in kinds:
        check_choice("head", kind, HEADS.names())
    return dict(zip(exits, kinds))


def add_early_exits(
    model: nn.Module,
    *,
    exits: Sequence[str],
    example_inputs: torch.Tensor,
    head: str | Sequence[str] = "pool_linear",
    criterion: str = "confidence",
    threshold: float | None = None,
    cascade: bool = False,
) -> EarlyExitModel:
    """A new :class:`EarlyExitModel`: ``model`` cut after each module in ``exits``, a head at each cut.

    ``exits`` are module names (``features.5``, a whole block such as ``layer2``, or a layer inside a
    residual block such as ``layer1.0.conv1``). Heads come from :data:`HEADS`; their classes are the
    model's output width; ``head`` is one kind for every exit or one kind per exit, in the order of
    ``exits`` (e.g. a cheap global-pool head at an early exit every later sample pays for, a conv head
    later). The input model is not modified (the new one holds copies of its layers).
    ``cascade``: every head after the first also reads the previous head's logits (Zero Time Waste,
    :class:`~netcompress.dynamic.exit_ensemble.CascadeHead`).

    Example:
        >>> ee = add_early_exits(digits_cnn(), exits=["features.2", "features.6"],
        ...                      example_inputs=torch.randn(1, 1, 8, 8))
        >>> [t.shape for t in ee.train()(torch.randn(4, 1, 8, 8))]
        [torch.Size([4, 10]), torch.Size([4, 10]), torch.Size([4, 10])]
    """
    exits = list(exits)
    if not exits:
        raise ConfigError("exits is empty: name at least one layer after which to attach a head")
    kinds = head_kinds(head, exits)
    if len(set(exits)) != len(exits):
        raise ConfigError(f"exits {exits} name a layer twice")
    if not isinstance(example_inputs, torch.Tensor):
        raise ConfigError(f"example_inputs must be one tensor, got {type(example_inputs).__name__}")
    names = dict(model.named_modules())
    for name in exits:
        if name not in names or not name:
            raise ConfigError(f"exit {name!r} is not a submodule of {type(model).__name__}")
        for other in exits:
            if name.startswith(other + "."):
                raise ConfigError(f"exit {name!r} lies inside exit {other!r}: name one or the other")
    gm = _trace(copy.deepcopy(model), exits, example_inputs)
    cuts = _cut_nodes(gm, exits)
    segments, states = _split(gm, cuts)
    exit_names = [str(c.target) for c in cuts]
    shapes = _state_shapes(segments, states, exit_names, example_inputs)
    if len(shapes[-1]) != 1:
        raise UnsupportedModelError(
            f"early exits need (batch, classes) logits; the model returns (batch, *{shapes[-1]})"
        )
    num_classes = shapes[-1][0]
    heads = []
    for name, shape in zip(exit_names, shapes[:-1]):
        if len(shape) < 1:
            raise UnsupportedModelError(f"exit {name!r}: output of shape {shape} has no channel axis")
        heads.append(HEADS.get(kinds[name])(in_channels=shape[0], num_classes=num_classes))
    if cascade:
        heads = cascade_heads(heads, num_classes=num_classes)
    return EarlyExitModel(
        segments=segments, heads=heads, exit_names=exit_names, criterion=criterion, threshold=threshold
    )
