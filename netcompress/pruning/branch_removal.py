"""Depth pruning: remove a whole residual branch, so its block computes ``post(x)`` instead of ``post(x + f(x))``.

On a CPU the cheapest latency in a memory-bound stage (ResNet-20's 16-channel 32x32 stage) is not a
thinner block but no block: width pruning thins the residual stream every block reads and writes, while
removing a branch keeps the stream and drops the branch's convolutions and its intermediate tensors.
Residual nets tolerate losing a few blocks far better than thinning them all (Veit et al., 2016).

A channel group is *removable* when it is the inner group of a residual branch with an identity shortcut:

- the branch is every node between the group's producers and one ``add`` (``+``, ``torch.add``,
  ``Tensor.add``), all inside the forward of one module (the *owner*, e.g. a ``BasicBlock``);
- no value of the branch is read by anything but the branch itself and that add (a branch whose
  intermediate also feeds another op is refused: removing it would change that op);
- every layer carrying the group's channels is in the branch;
- the add's other operand is the branch's own input, through ``nn.Identity`` at most (a projection
  shortcut, ``downsample(x)``, is not removable this way), and both operands have the same shape.

:func:`remove_branches_` replaces each owner with a ``torch.fx.GraphModule`` of its forward in which the add
is its shortcut operand and the branch's nodes and modules are gone: a real smaller model, equal to the
original whose branch output is replaced by zeros. ONNX export and latency timing see the smaller graph.

Example:
    >>> branches = removable_branches(model, graph, example_inputs)      # group id -> Branch
    >>> small = remove_branches_(copy.deepcopy(model), [branches[2]])     # layer1.1's branch gone
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from netcompress.core.errors import UnsupportedModelError
from netcompress.pruning.graph import ChannelGraph, as_inputs, eval_mode
from netcompress.pruning.graph_tracing import trace_model

__all__ = ["Branch", "find_branch", "removable_branches", "remove_branches_"]

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")


@dataclasses.dataclass(frozen=True)
class Branch:
    """A removable residual branch: the module whose forward holds it (``""``: the model itself), the add node's
    name in that module's trace, and the modules only the branch calls (qualified names, removed with it)."""

    owner: str
    add: str
    skip_arg: int  # which of the add's two arguments is the shortcut (0 or 1)
    modules: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"owner": self.owner, "add": self.add, "modules": list(self.modules)}


def _is_add(node: torch.fx.Node) -> bool:
    tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
    if len(tensors) != 2 or len(node.args) != 2 or node.kwargs:
        return False
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in _ADD_METHODS
    )


def _through_identity(node: Any, modules: dict[str, nn.Module]) -> Any:
    while (
        isinstance(node, torch.fx.Node)
        and node.op == "call_module"
        and isinstance(modules.get(str(node.target)), nn.Identity)
    ):
        node = node.args[0]
    return node


def _descendants(starts: Iterable[torch.fx.Node]) -> set[torch.fx.Node]:
    seen, todo = set(), list(starts)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(node.users)
    return seen


def _ancestors(node: torch.fx.Node, within: set[torch.fx.Node]) -> set[torch.fx.Node]:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in within and n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


def _owner_inputs(model: nn.Module, owner: str, example_inputs: Any) -> tuple[Any, ...] | None:
    """The positional inputs ``owner`` receives when the model runs on ``example_inputs`` (None: not called)."""
    seen: list[tuple[Any, ...]] = []
    hook = model.get_submodule(owner).register_forward_pre_hook(lambda _m, args: seen.append(args))
    try:
        with eval_mode(model), torch.no_grad():
            model(*as_inputs(example_inputs))
    finally:
        hook.remove()
    return seen[0] if len(seen) == 1 else None


def _branch_in(
    owner_module: nn.Module, producers: Sequence[str], members: Sequence[str], owner_inputs: tuple[Any, ...]
) -> tuple[torch.fx.Node, set[torch.fx.Node]] | str:
    """``(add node, branch nodes)`` of the branch in ``owner_module``'s forward, or why it is not removable."""
    gm = trace_model(owner_module)
    modules = dict(gm.named_modules())
    nodes = {str(n.target): n for n in gm.graph.nodes if n.op == "call_module"}
    if any(p not in nodes for p in producers):
        return "its producers are not all called in one module's forward"
    starts = [nodes[p] for p in producers]
    reach = _descendants(starts)
    add = next((n for n in gm.graph.nodes if n in reach and _is_add(n)), None)
    if add is None:
        return "its channels reach no residual add"
    branch_arg, skip = add.args
    if skip in reach:
        branch_arg, skip = skip, branch_arg
    if branch_arg not in reach or skip in reach:
        return f"both operands of {add.name!r} depend on the group"
    branch = _ancestors(branch_arg, reach)
    leaks = sorted(u.name for n in branch for u in n.users if u not in branch and u is not add)
    if leaks or reach - branch - {add} - _descendants([add]):
        return f"the branch also feeds {leaks[0] if leaks else 'another op'} (not only the residual add)"
    outside = [m for m in members if m not in nodes or nodes[m] not in branch]
    if outside:
        return f"its channels reach {outside[0]!r} outside the branch"
    inputs = {a for n in branch for a in n.all_input_nodes if a not in branch and a.op != "get_attr"}
    if len(inputs) != 1 or _through_identity(skip, modules) not in inputs:
        return "its block's shortcut is not the identity (a projection shortcut is not removable)"
    try:
        with eval_mode(gm), torch.no_grad():
            ShapeProp(gm).propagate(*owner_inputs)
    except Exception as exc:  # the owner does not run alone on its recorded inputs
        return f"its block does not run alone ({type(exc).__name__}: {exc})"
    shapes = [a.meta.get("tensor_meta") for a in (branch_arg, skip)]
    if any(s is None for s in shapes) or shapes[0].shape != shapes[1].shape:
        return "the branch and its shortcut differ in shape"
    return add, branch


def find_branch(
    model: nn.Module, producers: Sequence[str], members: Sequence[str], example_inputs: Any
) -> Branch:
    """The removable branch holding a group made by ``producers`` whose channels sit in the layers ``members``.

    The owner is the innermost module holding every member whose forward has the add; an UnsupportedModelError
    says why the group is not a removable branch."""
    parts = [m.split(".") for m in members]
    common = []
    for names in zip(*parts):
        if len(set(names)) > 1:
            break
        common.append(names[0])
    prefixes = [".".join(common[:k]) for k in range(min(len(common), min(map(len, parts)) - 1), -1, -1)]
    why = "no enclosing module"
    for owner in prefixes:
        inputs = _owner_inputs(model, owner, example_inputs)
        if inputs is None:
            why = f"module {owner!r} is not called exactly once"
            continue
        cut = len(owner) + 1 if owner else 0
        found = _branch_in(
            model.get_submodule(owner), [p[cut:] for p in producers], [m[cut:] for m in members], inputs
        )
        if isinstance(found, str):
            why = found
            if "reach no residual add" in found or "not all called" in found:
                continue  # the add may sit one module further out
            break
        add, branch = found
        branch_arg = next(a for a in add.args if a in branch)
        names = sorted(
            f"{owner}.{n.target}" if owner else str(n.target) for n in branch if n.op == "call_module"
        )
        return Branch(
            owner=owner, add=add.name, skip_arg=1 - add.args.index(branch_arg), modules=tuple(names)
        )
    raise UnsupportedModelError(
        f"the group of {', '.join(producers)} is not a removable residual branch: {why}"
    )


def removable_branches(
    model: nn.Module, graph: ChannelGraph, example_inputs: Any, group_ids: Iterable[int] | None = None
) -> dict[int, Branch]:
    """Group id -> :class:`Branch` for every (given) prunable group that is a removable residual branch."""
    wanted = set(group_ids) if group_ids is not None else {g.id for g in graph.prunable_groups()}
    found = {}
    for group in graph.groups:
        if group.id not in wanted or not group.prunable or not group.producers:
            continue
        members = sorted({layer for layer, _dim, _i in group.units[0]})
        try:
            found[group.id] = find_branch(model, group.producers, members, example_inputs)
        except UnsupportedModelError:
            continue
    return found


def remove_branches_(model: nn.Module, branches: Iterable[Branch]) -> nn.Module:
    """Remove ``branches`` from ``model`` (in place: callers deep-copy first); returns the model.

    Each owner module is replaced by its traced forward with the add taken by its shortcut and the branch
    dead-code-eliminated (innermost owners first); where the owner is the model itself, the returned model is
    that GraphModule."""
    by_owner: dict[str, list[Branch]] = {}
    for branch in branches:
        by_owner.setdefault(branch.owner, []).append(branch)
    for owner in sorted(by_owner, key=lambda o: -(o.count(".") + 1) if o else 0):
        module = model.get_submodule(owner)
        gm = trace_model(module)
        nodes = {n.name: n for n in gm.graph.nodes}
        for branch in by_owner[owner]:
            add = nodes.get(branch.add)
            if add is None or not _is_add(add):
                raise UnsupportedModelError(
                    f"{owner or 'the model'}: no residual add {branch.add!r} to remove"
                )
            add.replace_all_uses_with(add.args[branch.skip_arg])
            gm.graph.erase_node(add)
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
        # pickling re-traces the code with the graph's tracer class, built without arguments: the plain one
        gm._tracer_cls = gm.graph._tracer_cls = None
        if not owner:
            return gm
        parent, _, name = owner.rpartition(".")
        setattr(model.get_submodule(parent), name, gm)
    return model
