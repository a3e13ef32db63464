"""Replaying the part of a model between one module and the layers that consume its output.

A layer-wise PTQ search (:mod:`~netcompress.quantization.range_search`) scores many candidate
settings of one quantizer by what its consumers compute. Running the whole model per candidate
costs a full forward each; instead :class:`LocalReplay` runs the model once (stopping as soon as
every value it needs exists), caches the inputs of the region between the module and its
consumers, and replays only that region per candidate. In a traced model (``torch.fx``) the region
is every node on a path from the module to a consumer, so adds, pooling and reshapes in between
are replayed as the model computes them; in an eager model the consumer is the module itself or
the layer that owns it, called directly.

Example:
    >>> replay = LocalReplay(qmodel, "act_quant.conv_in", [qmodel.conv], batches)
    >>> outputs = replay.outputs()          # [per consumer: outputs over all batches]
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from netcompress.core.inputs import args_kwargs
from netcompress.quantization.layer_capture import capture


class _Captured(Exception):
    """Raised once every needed value of the caching pass exists: the rest of the forward is skipped."""


class _Recorder(fx.Interpreter):
    """Runs a GraphModule node by node, keeps the values of ``wanted`` and stops when all exist."""

    def __init__(self, gm: fx.GraphModule, wanted: set[fx.Node]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.wanted = wanted
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.wanted:
            # a copy: an in-place op later in this pass (or in a replay) must not change it
            self.values[n] = out.clone() if isinstance(out, torch.Tensor) else out
            if len(self.values) == len(self.wanted):
                raise _Captured
        return out


def _placeholder_args(gm: fx.GraphModule, inputs: Any) -> list[Any]:
    """The model inputs in placeholder order (keyword inputs matched by name, defaults filled in)."""
    args, kwargs = args_kwargs(inputs, where="calibration batch")
    out: list[Any] = []
    for i, node in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        if i < len(args):
            out.append(args[i])
        elif node.target in kwargs:
            out.append(kwargs[node.target])
        else:
            out.append(node.args[0] if node.args else None)
    return out


def region_nodes(gm: fx.GraphModule, starts: list[fx.Node], ends: list[fx.Node]) -> list[fx.Node]:
    """``starts`` and every node on a path from one of them to one of ``ends``, in graph order."""
    below: set[fx.Node] = set()
    stack = list(starts)
    while stack:
        for user in stack.pop().users:
            if user not in below:
                below.add(user)
                stack.append(user)
    keep = set(starts) | {e for e in ends if e in below}
    stack = list(keep)
    while stack:
        for arg in stack.pop().all_input_nodes:
            if arg in below and arg not in keep:
                keep.add(arg)
                stack.append(arg)
    return [n for n in gm.graph.nodes if n in keep]


class LocalReplay:
    """Module ``name`` of ``model`` and its ``consumers`` (modules; ``[module]`` itself allowed).

    Construction runs one forward per batch, stopped once the region's inputs exist; :meth:`outputs` replays only the region
    between the module and its consumers. ``inputs`` holds the module's own inputs (first
    argument), per batch.
    """

    def __init__(self, model: nn.Module, name: str, consumers: Sequence[nn.Module], batches: Sequence[Any]):
        self.model, self.consumers = model, list(consumers)
        starts = (
            [n for n in model.graph.nodes if n.op == "call_module" and n.target == name]
            if isinstance(model, fx.GraphModule)
            else []
        )
        if starts:
            self._init_graph(model, starts, batches)
            return
        # eager: the module itself, or the layer that calls it first thing (QuantLayer.input_fq)
        self.gm = None
        if len(self.consumers) != 1:
            raise ValueError(f"LocalReplay: {name} in an eager model feeds {len(self.consumers)} modules")
        self.runner = self.consumers[0]
        self.inputs = [capture(model, [b], [self.runner], want=("input",))[0]["input"] for b in batches]

    def _init_graph(self, gm: fx.GraphModule, starts: list[fx.Node], batches: Sequence[Any]) -> None:
        self.gm = gm
        by_module = {id(gm.get_submodule(n.target)): n for n in gm.graph.nodes if n.op == "call_module"}
        self.ends = [by_module[id(c)] for c in self.consumers]
        self.region = region_nodes(gm, starts, self.ends)
        inside = set(self.region)
        self.externals = {a for n in self.region for a in n.all_input_nodes if a not in inside}
        first = starts[0].all_input_nodes[0] if starts[0].all_input_nodes else None
        self.cache: list[dict[fx.Node, Any]] = []
        self.inputs: list[torch.Tensor] = []
        with torch.no_grad():
            for inputs in batches:
                recorder = _Recorder(gm, set(self.externals))
                if self.externals:
                    with contextlib.suppress(_Captured):
                        recorder.run(*_placeholder_args(gm, inputs))
                self.cache.append(recorder.values)
                if first is not None:
                    self.inputs.append(recorder.values[first])

    def outputs(self) -> list[torch.Tensor]:
        """Each consumer's output over all batches (concatenated), the region replayed as it is now."""
        per: list[list[torch.Tensor]] = [[] for _ in self.consumers]
        with torch.no_grad():
            if self.gm is None:
                for x in self.inputs:
                    per[0].append(self.runner(x))
            else:
                interp = fx.Interpreter(self.gm, garbage_collect_values=False)
                for values in self.cache:
                    interp.env = {
                        k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in values.items()
                    }
                    for node in self.region:
                        interp.env[node] = interp.run_node(node)
                    for i, end in enumerate(self.ends):
                        per[i].append(interp.env[end])
        return [torch.cat(p, dim=0) for p in per]
