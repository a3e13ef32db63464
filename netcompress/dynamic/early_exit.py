"""Early exit: classifier heads attached inside a network, so easy samples stop early.

:func:`add_early_exits` cuts a copy of the model (traced with ``torch.fx``) after the named
layers into ``segments`` and attaches a small head after each cut. In training the model
returns every head's logits (the last is the original classifier); in eval mode with a
``threshold`` each sample leaves at the first head whose prediction is confident enough and
the rest of the batch carries on, so the compute saved is real, not only counted.

Confidence criteria (registry :data:`EXIT_CRITERIA`):

- ``confidence``: exit when ``max softmax >= threshold`` (0 exits everything at the first
  head; a threshold above 1 sends everything to the last).
- ``entropy``: exit when the entropy of the softmax, divided by ``ln(num_classes)`` so that
  it lies in [0, 1] whatever the number of classes, is ``<= threshold``.

Example::

    ee = add_early_exits(model, exits=["features.5"], example_inputs=torch.randn(1, 1, 8, 8))
    ee.set_policy(criterion="confidence", threshold=0.9)
    logits = ee.eval()(images)            # per-sample exit
    ee.last_exit_counts                   # e.g. [190, 66]: samples that left at each exit
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from netcompress.core.config import check_choice
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.registry import Registry
from netcompress.evaluation.harness import eval_mode

ExitCriterion = Callable[[torch.Tensor, float], torch.Tensor]

EXIT_CRITERIA: Registry[ExitCriterion] = Registry("early-exit criterion")

# Threshold grids that span the whole trade-off curve, both ends included: for confidence 0
# exits everything at the first head and 1.01 nothing; for normalised entropy the reverse.
DEFAULT_THRESHOLDS: dict[str, list[float]] = {
    "confidence": [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01],
    "entropy": [1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0],
}


@EXIT_CRITERIA.register("confidence")
def confident_by_max_prob(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """True per sample where the top softmax probability is ``>= threshold``.

    Example:
        >>> confident_by_max_prob(torch.tensor([[4.0, 0.0], [0.1, 0.0]]), 0.9)
        tensor([ True, False])
    """
    return F.softmax(logits.float(), dim=1).amax(dim=1) >= threshold


@EXIT_CRITERIA.register("entropy")
def confident_by_entropy(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """True per sample where the softmax entropy over ``ln(num_classes)`` is ``<= threshold``.

    Normalising makes one threshold mean the same for 2 or 1000 classes (1.0 = uniform).

    Example:
        >>> confident_by_entropy(torch.tensor([[8.0, 0.0], [0.0, 0.0]]), 0.1)
        tensor([ True, False])
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1)
    return entropy / math.log(logits.shape[1]) <= threshold


def route_exits(
    exit_logits: Sequence[torch.Tensor], *, criterion: str = "confidence", threshold: float
) -> torch.Tensor:
    """Index of the exit each sample takes: the first confident head, else the last exit.

    ``exit_logits`` holds one ``(N, classes)`` tensor per exit, the last being the final
    classifier (always taken by the samples no earlier head was sure of).

    Example:
        >>> route_exits([torch.tensor([[5.0, 0.0], [0.0, 0.0]]), torch.zeros(2, 2)], threshold=0.9)
        tensor([0, 1])
    """
    check_choice("criterion", criterion, EXIT_CRITERIA.names())
    if not exit_logits:
        raise ConfigError("route_exits needs at least one exit's logits")
    confident = EXIT_CRITERIA.get(criterion)
    rows = [confident(logits, threshold) for logits in exit_logits[:-1]]
    rows.append(torch.ones_like(exit_logits[-1][:, 0], dtype=torch.bool))
    # argmax returns the first maximum: the earliest confident exit
    return torch.stack(rows).to(torch.uint8).argmax(dim=0)


class PoolLinearHead(nn.Module):
    """Global average pool over every spatial/time axis, then one Linear to the classes."""

    def __init__(self, *, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(2).mean(dim=2) if x.dim() > 2 else x)


class PoolMLPHead(nn.Module):
    """Global average pool, Linear-ReLU to ``hidden`` units, Linear to the classes (a stronger head)."""

    def __init__(self, *, in_channels: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_channels, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).mean(dim=2) if x.dim() > 2 else x
        return self.fc(F.relu(self.hidden(x)))


# name -> head class built with (in_channels=, num_classes=)
HEADS: Registry[type[nn.Module]] = Registry("early-exit head")
HEADS.register("pool_linear", PoolLinearHead)
HEADS.register("pool_mlp", PoolMLPHead)


class EarlyExitModel(nn.Module):
    """A backbone cut into ``segments`` with a head after every segment but the last.

    - training mode: ``forward`` returns the list of every exit's logits (last = original
      classifier). With ``stash_exit_logits = True`` (set by :class:`EarlyExitHook` for
      ``fit``) it returns only the final logits, so ``fit`` reports ``train_acc``, and keeps
      the list for the hook's loss (:meth:`pop_exit_logits`).
    - eval mode, ``threshold`` None: the original model (all samples through the last exit).
    - eval mode with a threshold: per-sample early exit by ``criterion``; records
      ``last_exit_counts`` (samples per exit) and ``last_exit_index`` (exit of each sample).
    """

    def __init__(
        self,
        *,
        segments: Sequence[nn.Module],
        heads: Sequence[nn.Module],
        exit_names: Sequence[str],
        criterion: str = "confidence",
        threshold: float | None = None,
    ) -> None:
        super().__init__()
        if len(segments) != len(heads) + 1 or len(exit_names) != len(heads):
            raise ConfigError(
                f"EarlyExitModel needs one more segment than heads and one name per head; got "
                f"{len(segments)} segments, {len(heads)} heads, {len(exit_names)} names"
            )
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleList(heads)
        self.exit_names = list(exit_names)
        self.criterion = "confidence"
        self.threshold: float | None = None
        self.set_policy(criterion=criterion, threshold=threshold)
        self.stash_exit_logits = False
        self.last_exit_counts: list[int] = []
        self.last_exit_index: torch.Tensor | None = None
        self._stashed: list[torch.Tensor] | None = None

    @property
    def num_exits(self) -> int:
        """Heads plus the final classifier."""
        return len(self.heads) + 1

    def set_policy(self, *, criterion: str | None = None, threshold: float | None) -> EarlyExitModel:
        """Choose the eval-time exit rule; ``threshold=None`` always runs the full network."""
        if criterion is not None:
            check_choice("criterion", criterion, EXIT_CRITERIA.names())
            self.criterion = criterion
        if threshold is not None and not isinstance(threshold, (int, float)):
            raise ConfigError(f"threshold={threshold!r} must be a number or None")
        self.threshold = None if threshold is None else float(threshold)
        return self

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for every sample (what training and the trade-off sweep use)."""
        outputs = []
        for index, segment in enumerate(self.segments):
            x = segment(x)
            outputs.append(self.heads[index](x) if index < len(self.heads) else x)
        return outputs

    def pop_exit_logits(self) -> list[torch.Tensor] | None:
        """The exit logits stashed by the last training forward (then forgotten)."""
        stashed, self._stashed = self._stashed, None
        return stashed

    def forward(self, x: torch.Tensor) -> Any:
        if self.training:
            outputs = self.forward_all(x)
            if self.stash_exit_logits:
                self._stashed = outputs
                return outputs[-1]
            return outputs
        if self.threshold is None:
            for segment in self.segments:
                x = segment(x)
            if not torch.jit.is_tracing():  # ONNX export traces this path: no Python ints from shapes
                self.last_exit_counts = [0] * len(self.heads) + [int(x.shape[0])]
                self.last_exit_index = torch.full((x.shape[0],), len(self.heads), dtype=torch.long)
            return x
        return self._forward_routed(x)

    def _forward_routed(self, x: torch.Tensor) -> torch.Tensor:
        count = x.shape[0]
        confident = EXIT_CRITERIA.get(self.criterion)
        exit_index = torch.full((count,), len(self.heads), dtype=torch.long, device=x.device)
        remaining = torch.arange(count, device=x.device)
        result: torch.Tensor | None = None
        for index, segment in enumerate(self.segments):
            x = segment(x)
            last = index == len(self.heads)
            logits = x if last else self.heads[index](x)
            if result is None:
                result = logits.new_empty((count, *logits.shape[1:]))
            done = torch.ones_like(remaining, dtype=torch.bool) if last else confident(logits, self.threshold)
            result[remaining[done]] = logits[done]
            exit_index[remaining[done]] = index
            if bool(done.all()):
                break
            if bool(done.any()):
                # only the undecided samples run on: this is where the compute is saved
                x, remaining = x[~done], remaining[~done]
        self.last_exit_index = exit_index.cpu()
        self.last_exit_counts = torch.bincount(self.last_exit_index, minlength=self.num_exits).tolist()
        assert result is not None
        return result

    def __getstate__(self) -> dict[str, Any]:
        # stashed logits are transient graph tensors that refuse deepcopy/pickling
        return {**super().__getstate__(), "_stashed": None}


def as_early_exit(model: nn.Module) -> EarlyExitModel:
    """``model`` itself, checked to be an EarlyExitModel (else UnsupportedModelError)."""
    if not isinstance(model, EarlyExitModel):
        raise UnsupportedModelError(
            f"expected an EarlyExitModel (from add_early_exits), got {type(model).__name__}"
        )
    return model


class _ExitTracer(fx.Tracer):
    """Keeps the exit layers whole (leaves), so an exit may name a block such as ``layer2``."""

    def __init__(self, exits: set[str]) -> None:
        super().__init__()
        self.exits = exits

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.exits or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, exits: Sequence[str]) -> fx.GraphModule:
    tracer = _ExitTracer(set(exits))
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises several types for data-dependent code
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
            "early exits need a traceable forward"
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _cut_nodes(gm: fx.GraphModule, exits: Sequence[str]) -> list[fx.Node]:
    """The graph nodes after which to cut, in execution order, each checked to be a clean cut."""
    nodes = list(gm.graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedModelError(f"early exits need a model with one input; it takes {len(placeholders)}")
    output = next(n for n in nodes if n.op == "output")
    cuts = []
    for name in exits:
        found = [n for n in nodes if n.op == "call_module" and n.target == name]
        if not found:
            raise ConfigError(f"exit {name!r}: the model's forward never calls a module of that name")
        if len(found) > 1:
            raise UnsupportedModelError(f"exit {name!r}: that module runs {len(found)} times per forward")
        node = found[0]
        if node in output.all_input_nodes:
            raise ConfigError(f"exit {name!r} is the model's last layer; an exit there saves nothing")
        position = order[node]
        for earlier in nodes[: position + 1]:
            if earlier is node:
                continue
            if any(order[user] > position for user in earlier.users):
                raise UnsupportedModelError(
                    f"exit {name!r}: the value of {earlier.name!r} is still used after it (a skip "
                    "connection crosses this point); attach exits at block boundaries"
                )
        cuts.append(node)
    return sorted(cuts, key=order.__getitem__)


def _split(gm: fx.GraphModule, cuts: list[fx.Node]) -> list[fx.GraphModule]:
    """One GraphModule per segment: placeholder -> cut 1, cut 1 -> cut 2, ..., last cut -> output."""
    nodes = list(gm.graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    bounds = [order[c] for c in cuts] + [len(nodes) - 1]
    segments, start = [], 0
    for k, end in enumerate(bounds):
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        if k > 0:
            env[cuts[k - 1]] = graph.placeholder("x")
        for node in nodes[start : end + 1]:
            env[node] = graph.node_copy(node, env.__getitem__)
        if k < len(cuts):
            graph.output(env[cuts[k]])
        graph.lint()
        segments.append(fx.GraphModule(gm, graph, f"Segment{k}"))
        start = end + 1
    return segments


def add_early_exits(
    model: nn.Module,
    *,
    exits: Sequence[str],
    example_inputs: torch.Tensor,
    head: str = "pool_linear",
    criterion: str = "confidence",
    threshold: float | None = None,
) -> EarlyExitModel:
    """A new :class:`EarlyExitModel`: ``model`` cut after each layer in ``exits``, a head at each cut.

    ``exits`` are module names (``features.5``, or a whole block such as ``layer2``); a cut
    that a skip connection crosses raises :class:`UnsupportedModelError` naming the value.
    Heads come from :data:`HEADS`; their classes are the model's output width. The input
    model is not modified (the new one holds copies of its layers).

    Example:
        >>> ee = add_early_exits(digits_cnn(), exits=["features.2", "features.6"],
        ...                      example_inputs=torch.randn(1, 1, 8, 8))
        >>> [t.shape for t in ee.train()(torch.randn(4, 1, 8, 8))]
        [torch.Size([4, 10]), torch.Size([4, 10]), torch.Size([4, 10])]
    """
    check_choice("head", head, HEADS.names())
    exits = list(exits)
    if not exits:
        raise ConfigError("exits is empty: name at least one layer after which to attach a head")
    if len(set(exits)) != len(exits):
        raise ConfigError(f"exits {exits} name a layer twice")
    if not isinstance(example_inputs, torch.Tensor):
        raise ConfigError(f"example_inputs must be one tensor, got {type(example_inputs).__name__}")
    names = dict(model.named_modules())
    for name in exits:
        if name not in names or not name:
            raise ConfigError(f"exit {name!r} is not a submodule of {type(model).__name__}")
    gm = _trace(copy.deepcopy(model), exits)
    cuts = _cut_nodes(gm, exits)
    segments = _split(gm, cuts)
    shapes = _feature_shapes(segments, example_inputs)
    if len(shapes[-1]) != 2:
        raise UnsupportedModelError(
            f"early exits need (batch, classes) logits; the model returns {shapes[-1]}"
        )
    num_classes = shapes[-1][1]
    heads = []
    for name, shape in zip([str(c.target) for c in cuts], shapes[:-1]):
        if len(shape) < 2:
            raise UnsupportedModelError(f"exit {name!r}: output of shape {shape} has no channel axis")
        heads.append(HEADS.get(head)(in_channels=shape[1], num_classes=num_classes))
    return EarlyExitModel(
        segments=segments,
        heads=heads,
        exit_names=[str(c.target) for c in cuts],
        criterion=criterion,
        threshold=threshold,
    )


def _feature_shapes(segments: Sequence[nn.Module], example_inputs: torch.Tensor) -> list[tuple[int, ...]]:
    shapes = []
    x = example_inputs
    with eval_mode(nn.ModuleList(segments)), torch.no_grad():
        for segment in segments:
            x = segment(x)
            if not isinstance(x, torch.Tensor):
                raise UnsupportedModelError(f"a segment returned {type(x).__name__}, not a tensor")
            shapes.append(tuple(x.shape))
    return shapes
