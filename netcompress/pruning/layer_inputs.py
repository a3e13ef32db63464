"""Statistics of the inputs of prunable weights, gathered with hooks while a model (or one block) runs.

:class:`InputStats` keeps, per target, the count of input rows, per-feature sums of squares and (when
asked) the Gram matrix ``X^T X``: never the inputs themselves, so memory is ``in^2`` per layer whatever
the amount of data. :func:`probe` finds, in one forward, the order in which targets are called and
groups those that read the very same tensor (q, k and v of an attention: pruning one cannot change the
others' input). :func:`prune_groups` then, group by group, runs the inputs through ``run`` (the whole
model, or one cached transformer block), stops each forward as soon as the group has seen its inputs,
and hands every target with its statistics to the ``prune`` callback, so the next group's inputs come
from the model already pruned upstream.

Example:
    >>> groups, calls, _ = probe(lambda b: model(b), batches[0], targets)
    >>> prune_groups(groups, targets, calls, batches, lambda b: model(b), prune=my_prune, gram=True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from netcompress.pruning.weight_targets import WeightTarget

Run = Callable[[Any], Any]
PruneFn = Callable[[str, Any, "InputStats"], dict[str, Any]]


class InputStats:
    """Running statistics of a layer's input rows: count, per-feature sum of squares, Gram matrix.

    Example:
        >>> stats = InputStats(3, gram=True); stats.add(torch.ones(5, 3))
        >>> stats.norms.tolist(), stats.hessian[0, 0].item()
        ([2.236..., 2.236..., 2.236...], 5.0)
    """

    def __init__(self, features: int, *, gram: bool, device: torch.device | str = "cpu") -> None:
        self.rows = 0
        self.squares = torch.zeros(features, dtype=torch.float64, device=device)
        self.gram = torch.zeros(features, features, dtype=torch.float64, device=device) if gram else None

    def add(self, rows: torch.Tensor) -> None:
        self.add_sums(*self.sums(rows, gram=self.gram is not None))

    @staticmethod
    def sums(rows: torch.Tensor, *, gram: bool) -> tuple[int, torch.Tensor, torch.Tensor | None]:
        """What ``rows`` add: their count, per-feature sum of squares and (with ``gram``) ``rows^T rows``."""
        rows = rows.detach().to(torch.float64)
        return rows.shape[0], rows.square().sum(0), (rows.T @ rows) if gram else None

    def add_sums(self, count: int, squares: torch.Tensor, gram: torch.Tensor | None) -> None:
        self.rows += count
        self.squares += squares
        if self.gram is not None and gram is not None:
            self.gram += gram

    @property
    def norms(self) -> torch.Tensor:
        """||X_j||_2 of every input feature j over all calibration rows (Wanda's activation norm)."""
        return self.squares.sqrt()

    @property
    def hessian(self) -> torch.Tensor:
        """``X^T X`` over all calibration rows (the layer-wise reconstruction Hessian, up to a factor 2)."""
        if self.gram is None:
            raise RuntimeError("InputStats was built without gram=True")
        return self.gram


class GroupDone(Exception):
    """Raised by a hook once every target of the group has seen its input: the rest of the forward is skipped."""


Hook = Callable[[list[str], tuple[Any, ...], dict[str, Any]], None]


@contextlib.contextmanager
def hooked(targets: dict[str, WeightTarget], hook: Hook) -> Any:
    """One forward pre-hook (with kwargs) per module feeding ``targets``: ``hook(names, args, kwargs)``."""
    modules: dict[int, tuple[nn.Module, list[str]]] = {}
    for name, target in targets.items():
        modules.setdefault(id(target.module), (target.module, []))[1].append(name)

    def make(names: list[str]) -> Callable[..., None]:
        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hook(names, args, kwargs)

        return pre

    handles = [m.register_forward_pre_hook(make(names), with_kwargs=True) for m, names in modules.values()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def probe(
    run: Run, inputs: Any, targets: dict[str, WeightTarget], active: Callable[[], Any] | None = None
) -> tuple[list[list[str]], dict[str, int], dict[str, set[Any]]]:
    """Groups of targets in call order (those reading one tensor together), calls per forward, and where.

    ``where[name]`` holds what ``active()`` returned at each call of the target (the block it ran in).
    """
    calls: dict[str, int] = {}
    where: dict[str, set[Any]] = {}
    first: dict[str, Any] = {}
    order: list[str] = []

    def record(names: list[str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for name in names:
            calls[name] = calls.get(name, 0) + 1
            where.setdefault(name, set()).add(None if active is None else active())
            if name not in first:
                first[name] = targets[name].source(args, kwargs)
                order.append(name)

    with hooked(targets, record), torch.no_grad():
        run(inputs)
    groups: list[list[str]] = []
    for name in order:
        tensor = first[name]
        shared = [g for g in groups if tensor is not None and first[g[0]] is tensor]
        if shared:
            shared[0].append(name)
        else:
            groups.append([name])
    return groups, calls, where


def collect(
    group: dict[str, WeightTarget], calls: dict[str, int], inputs: list[Any], run: Run, gram: bool
) -> dict[str, InputStats]:
    """Run ``inputs`` through ``run`` with hooks on ``group``: each target's input statistics (stopped early)."""
    stats = {
        name: InputStats(t.matrix().shape[1], gram=gram, device=t.weight.device) for name, t in group.items()
    }
    seen: dict[str, int] = {}
    # targets reading the same tensor (q/k/v) with the same geometry share its sums: computed once
    cache: list[tuple[Any, Any, tuple[int, torch.Tensor, torch.Tensor | None]]] = []

    def record(names: list[str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for name in names:
            target = group[name]
            tensor, geometry = target.source(args, kwargs), target.geometry()
            hit = [s for t, g, s in cache if tensor is not None and t is tensor and g == geometry]
            sums = hit[0] if hit else InputStats.sums(target.rows(args, kwargs), gram=gram)
            if not hit and tensor is not None:
                cache.append((tensor, geometry, sums))
            stats[name].add_sums(*sums)
            seen[name] = seen.get(name, 0) + 1
        if all(seen.get(n, 0) >= calls[n] for n in group):
            raise GroupDone

    with hooked(group, record), torch.no_grad():
        for item in inputs:
            seen.clear()
            cache.clear()
            with contextlib.suppress(GroupDone):
                run(item)
    return stats


def prune_groups(
    groups: list[list[str]],
    targets: dict[str, WeightTarget],
    calls: dict[str, int],
    inputs: list[Any],
    run: Run,
    *,
    prune: Callable[[str, InputStats], dict[str, Any]],
    gram: bool,
    done: dict[str, dict[str, Any]],
) -> None:
    """For each group in order: collect its statistics on ``inputs`` through ``run``, then prune its targets."""
    for group in groups:
        members = {name: targets[name] for name in group}
        stats = collect(members, calls, inputs, run, gram)
        for name in members:
            done[name] = prune(name, stats[name])
