"""One threshold per exit, chosen on the validation split; and the oracle bound on any routing rule.

:func:`choose_exit_thresholds` starts where nobody leaves early and walks a greedy path: each step
lowers the threshold of the one exit that buys the most average MACs per validation sample lost
(moves that lose nothing first); the point on that path meeting the bound (an accuracy bound or a
MAC budget, as in :func:`~netcompress.dynamic.exit_calibration.choose_threshold`) and the best
single threshold are then polished by coordinate descent (each exit's threshold in turn set to its
best value with the others fixed) and the better result is returned. It can only match or beat the
single threshold on the samples it was chosen on: read the gain on a split it did not see.

:func:`oracle_exit_macs` is what no threshold rule can beat with these heads: the fewest average
MACs at which each sample could leave (it knows the labels), at accuracy at least the final exit's
minus a drop; and the MACs of leaving at the earliest exit that agrees with the final one.

Example::

    choice = choose_exit_thresholds(exit_logits, labels, exit_macs=macs, max_accuracy_drop=0.01)
    ee.set_policy(threshold=choice["thresholds"])          # one per head
    oracle_exit_macs(exit_logits, labels, exit_macs=macs, max_accuracy_drop=0.01)["macs_speedup"]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.dynamic.early_exit import EarlyExitModel, as_early_exit
from netcompress.dynamic.exit_calibration import _per_exit, choose_threshold, collect_validation
from netcompress.dynamic.exit_criteria import EXIT_CRITERIA, exit_scores, route_exits
from netcompress.dynamic.exit_evaluation import trade_off_rows

# internally every criterion reads "leave when u >= v": u = confidence, or minus the normalised
# entropy (both in [-1, 1]); -1.01 lets everybody leave at that head, 1.01 nobody
_ALL, _NONE = -1.01, 1.01


class _Routing:
    """Per-sample scores, correctness and MAC costs, and exact counts for any per-exit ``v``."""

    def __init__(self, exit_logits, labels, exit_macs, criterion) -> None:
        sign = 1.0 if criterion == "confidence" else -1.0
        self.u = torch.stack([sign * exit_scores(lg, criterion).double() for lg in exit_logits[:-1]])
        self.correct = torch.stack([lg.argmax(dim=1) == labels for lg in exit_logits]).long()
        self.macs = torch.tensor([float(m) for m in exit_macs], dtype=torch.float64)
        self.heads, self.count = len(exit_logits) - 1, len(labels)
        self.sign = sign
        # per head, the samples by falling score: a level lets out a prefix of this order
        self.order = [row.argsort(descending=True) for row in self.u]
        self.ascending = [-row[o] for row, o in zip(self.u, self.order)]
        self.index = torch.arange(self.count)

    def exits(self, v: torch.Tensor) -> torch.Tensor:
        leave = torch.cat([self.u >= v[:, None], torch.ones(1, self.count, dtype=torch.bool)])
        return leave.to(torch.uint8).argmax(dim=0)

    def cost(self, v: torch.Tensor) -> tuple[float, int]:
        """(total MACs, correct samples) of routing by ``v``."""
        chosen = self.exits(v)
        return float(self.macs[chosen].sum()), int(self.correct[chosen, torch.arange(self.count)].sum())

    def sweep(self, v: torch.Tensor, i: int, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Total MACs and correct counts for every value of ``v[i]`` in ``levels``, others fixed
        (prefix sums over head ``i``'s score order: O(N) per head, whatever the number of levels)."""
        others = v.clone()
        others[i] = _NONE  # where each sample goes if exit i lets nobody out
        fallback = self.exits(others)
        reach = fallback > i  # samples that get to exit i
        gain_macs = torch.where(reach, self.macs[i] - self.macs[fallback], 0.0)[self.order[i]]
        fallback_correct = self.correct[fallback, self.index]
        gain_correct = torch.where(reach, self.correct[i] - fallback_correct, 0)[self.order[i]]
        leaving = torch.searchsorted(self.ascending[i], -levels, right=True)
        zero = torch.zeros(1, dtype=torch.float64)
        macs = self.macs[fallback].sum() + torch.cat([zero, gain_macs.cumsum(0)])[leaving]
        correct = fallback_correct.sum() + torch.cat([zero.long(), gain_correct.cumsum(0)])[leaving]
        return macs, correct

    def thresholds(self, v: torch.Tensor) -> list[float]:
        return [float(self.sign * x) for x in v]


def _levels(u_i: torch.Tensor, max_levels: int) -> torch.Tensor:
    scores = u_i.unique()
    if scores.numel() > max_levels:
        scores = torch.quantile(scores, torch.linspace(0, 1, max_levels, dtype=torch.float64)).unique()
    middles = (scores[1:] + scores[:-1]) / 2
    return torch.cat([torch.tensor([_ALL], dtype=torch.float64), middles, torch.tensor([_NONE])])


def _better(bound: str, limit: float, a: tuple[float, int], b: tuple[float, int]) -> bool:
    """Is routing cost ``a`` (MACs, correct) strictly better than ``b`` under the bound?"""
    ok_a, ok_b = _feasible(bound, limit, a), _feasible(bound, limit, b)
    if ok_a != ok_b:
        return ok_a
    fewer = a[0] < b[0] - 1e-6
    same_macs = not fewer and a[0] <= b[0] + 1e-6
    more_correct = a[1] > b[1]
    # feasible: the objective (fewest MACs under an accuracy bound, most correct under a MAC budget);
    # both infeasible: closest to the bound first
    macs_first = (bound == "correct") == ok_a
    if macs_first:
        return fewer or (same_macs and more_correct)
    return more_correct or (a[1] == b[1] and fewer)


def _feasible(bound: str, limit: float, cost: tuple[float, int]) -> bool:
    return cost[1] >= limit if bound == "correct" else cost[0] <= limit + 1e-6


def _greedy_path(
    routing: _Routing, levels: list[torch.Tensor]
) -> list[tuple[torch.Tensor, tuple[float, int]]]:
    """From nobody leaving early, lower one exit at a time by the best MACs saved per sample lost."""
    v = torch.full((routing.heads,), _NONE, dtype=torch.float64)
    current = routing.cost(v)
    path = [(v.clone(), current)]
    while True:
        best_key, best_move = None, None
        for i in range(routing.heads):
            macs, correct = routing.sweep(v, i, levels[i])
            saved = current[0] - macs
            lost = (current[1] - correct).double()
            lower = (levels[i] < v[i]) & (saved > 1e-6)
            for k in lower.nonzero().flatten().tolist():
                s, c = float(saved[k]), float(lost[k])
                key = (1, -c, s) if c <= 0 else (0, s / c, s)  # free moves first, then by MACs per loss
                if best_key is None or key > best_key:
                    best_key, best_move = key, (i, k, (float(macs[k]), int(correct[k])))
        if best_move is None:
            return path
        i, k, current = best_move
        v[i] = levels[i][k]
        path.append((v.clone(), current))


def _best_level(routing, levels, v, i, bound, limit, current):
    """The best level of exit ``i`` with the others fixed, if strictly better than ``current``."""
    macs, correct = routing.sweep(v, i, levels[i])
    ok = correct >= limit if bound == "correct" else macs <= limit + 1e-6
    pool = ok.nonzero().flatten() if bool(ok.any()) else torch.arange(len(macs))
    m, c = macs[pool], correct[pool]
    if (bound == "correct") == bool(ok.any()):  # fewest MACs, then most correct
        tie = m <= m.min() + 1e-6
        pick = pool[tie][c[tie].argmax()]
    else:  # most correct, then fewest MACs
        tie = c == c.max()
        pick = pool[tie][m[tie].argmin()]
    k = int(pick)
    candidate = (float(macs[k]), int(correct[k]))
    if _better(bound, limit, candidate, current):
        return levels[i][k], candidate
    return None, current


def _polish(routing, levels, v, bound, limit, rounds: int = 20) -> tuple[torch.Tensor, tuple[float, int]]:
    """Coordinate descent: each exit's threshold set to its best level with the others fixed; when
    no single move helps, every pair of exits (one exit's every level, the other's best for it)."""
    v, current = v.clone(), routing.cost(v)
    for _ in range(rounds):
        moved = False
        for i in range(routing.heads):
            level, current = _best_level(routing, levels, v, i, bound, limit, current)
            if level is not None:
                v[i], moved = level, True
        if moved:
            continue
        for i in range(routing.heads):
            for j in range(routing.heads):
                if i == j:
                    continue
                for a in levels[i]:
                    trial = v.clone()
                    trial[i] = a
                    level, cost = _best_level(routing, levels, trial, j, bound, limit, current)
                    if level is not None:
                        trial[j] = level
                        v, current, moved = trial, cost, True
        if not moved:
            break
    return v, current


def _bound_limit(routing: Any, name: str, value: float, final_macs: float) -> tuple[str, float]:
    """The search's bound (``"correct"``: samples right, or ``"macs"``: MACs, summed over the samples)
    and its limit for the named bound (max_accuracy_drop, max_macs_fraction or max_macs)."""
    if name == "max_accuracy_drop":
        final_correct = int(routing.correct[-1].sum())
        return "correct", math.ceil(final_correct - value * routing.count - 1e-9)
    budget = value * final_macs if name == "max_macs_fraction" else value
    return "macs", float(budget) * routing.count


def _best_on_path(routing: Any, levels: list[torch.Tensor], bound: str, limit: float) -> tuple[tuple, int]:
    """The best point ``(v, cost)`` of the greedy path under the bound, and the path's step count."""
    path = _greedy_path(routing, levels)
    best = path[0]
    for point in path:
        if _better(bound, limit, point[1], best[1]):
            best = point
    return best, len(path) - 1


def _polish_better(
    routing: Any, levels: list[torch.Tensor], bound: str, limit: float, starts: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Coordinate-descent polish from both starts; the better end point under the bound."""
    first, second = (_polish(routing, levels, start, bound, limit) for start in starts)
    return (first if not _better(bound, limit, second[1], first[1]) else second)[0]


def choose_exit_thresholds(
    exit_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    exit_macs: Sequence[int],
    criterion: str = "confidence",
    max_accuracy_drop: float | None = None,
    max_macs_fraction: float | None = None,
    max_macs: float | None = None,
    max_levels: int = 64,
) -> dict[str, Any]:
    """One threshold per head meeting exactly one bound (see the module docstring).

    Returns ``thresholds`` (one per head, for ``set_policy``), ``accuracy``, ``expected_macs``,
    ``macs_fraction``, ``macs_speedup``, ``exit_counts``/``exit_shares``, ``per_exit``,
    ``final_accuracy``, ``accuracy_drop``, ``bound``, ``single`` (the best single threshold under
    the same bound, for comparison) and ``path_steps``. ``max_levels`` caps the thresholds tried
    per head (quantiles of its scores).

    Example:
        >>> choose_exit_thresholds([h0, h1, final], labels, exit_macs=[10, 30, 50], max_accuracy_drop=0.0)
    """
    check_choice("criterion", criterion, EXIT_CRITERIA.names())
    check_range("max_levels", max_levels, 2)
    if len(exit_macs) != len(exit_logits) or len(exit_logits) < 2:
        raise ConfigError(f"{len(exit_macs)} MAC counts for {len(exit_logits)} exits (at least one head)")
    bounds = {
        "max_accuracy_drop": max_accuracy_drop,
        "max_macs_fraction": max_macs_fraction,
        "max_macs": max_macs,
    }
    single = choose_threshold(exit_logits, labels, exit_macs=exit_macs, criterion=criterion, **bounds)
    ((name, value),) = single["bound"].items()
    routing = _Routing(exit_logits, labels, exit_macs, criterion)
    final_correct = int(routing.correct[-1].sum())
    bound, limit = _bound_limit(routing, name, value, exit_macs[-1])
    levels = [_levels(routing.u[i], max_levels) for i in range(routing.heads)]
    on_path, steps = _best_on_path(routing, levels, bound, limit)
    start_single = torch.tensor([routing.sign * single["threshold"]] * routing.heads, dtype=torch.float64)
    thresholds = routing.thresholds(_polish_better(routing, levels, bound, limit, (on_path[0], start_single)))
    (row,) = trade_off_rows(
        exit_logits, labels, exit_macs=exit_macs, criterion=criterion, thresholds=[thresholds]
    )
    chosen = route_exits(exit_logits, criterion=criterion, threshold=thresholds)
    correct = routing.correct[chosen, torch.arange(routing.count)].bool()
    final_accuracy = final_correct / routing.count
    row.pop("threshold")
    row["accuracy"] = int(correct.sum()) / routing.count  # exact (the row's is a float32 mean)
    return {
        **row,
        "thresholds": thresholds,
        "final_accuracy": final_accuracy,
        "accuracy_drop": final_accuracy - row["accuracy"],
        "macs_speedup": exit_macs[-1] / row["expected_macs"] if row["expected_macs"] else None,
        "per_exit": _per_exit(chosen, correct, len(exit_logits)),
        "bound": {name: value},
        "single": {k: single[k] for k in ("threshold", "accuracy", "expected_macs", "macs_speedup")},
        "path_steps": steps,
    }


def oracle_exit_macs(
    exit_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    exit_macs: Sequence[int],
    max_accuracy_drop: float = 0.0,
) -> dict[str, Any]:
    """The fewest average MACs any per-sample routing over these exits can reach (it knows labels).

    - ``macs`` / ``macs_speedup``: each correctable sample leaves at its earliest correct exit, the
      others at the first; then the samples whose loss saves the most MACs are given up, as many as
      ``max_accuracy_drop`` allows below the final exit's accuracy. No threshold rule does better.
    - ``agree_macs`` / ``agree_speedup``: each sample leaves at the earliest exit whose prediction
      equals the final exit's (exactly the final accuracy).

    Example:
        >>> oracle_exit_macs([h0, final], labels, exit_macs=[100, 400])["macs_speedup"]
    """
    check_range("max_accuracy_drop", max_accuracy_drop, 0.0)
    macs = torch.tensor([float(m) for m in exit_macs], dtype=torch.float64)
    predictions = torch.stack([lg.argmax(dim=1) for lg in exit_logits])
    count = len(labels)
    right = predictions == labels[None, :]
    any_right = right.any(dim=0)
    first_right = right.to(torch.uint8).argmax(dim=0)
    cost = torch.where(any_right, macs[first_right], macs[0])
    final_correct = int(right[-1].sum())
    need = math.ceil(final_correct - max_accuracy_drop * count - 1e-9)
    spare = max(0, int(any_right.sum()) - need)
    savings = (cost - macs[0])[any_right].sort(descending=True).values
    total = float(cost.sum() - savings[:spare].sum())
    agree = predictions == predictions[-1][None, :]
    agree_total = float(macs[agree.to(torch.uint8).argmax(dim=0)].sum())
    return {
        "macs": total / count,
        "macs_speedup": float(macs[-1]) * count / total,
        "accuracy": (int(any_right.sum()) - spare) / count,
        "final_accuracy": final_correct / count,
        "correct_anywhere": float(any_right.float().mean()),
        "agree_macs": agree_total / count,
        "agree_speedup": float(macs[-1]) * count / agree_total,
        "bound": {"max_accuracy_drop": max_accuracy_drop},
    }


def calibrate_exit_thresholds(
    model: EarlyExitModel,
    val_loader: Iterable,
    *,
    max_accuracy_drop: float | None = None,
    max_macs_fraction: float | None = None,
    max_macs: float | None = None,
    example_inputs: torch.Tensor | None = None,
    device: str = "cpu",
    max_batches: int | None = None,
    apply: bool = True,
) -> dict[str, Any]:
    """Choose one threshold per head of ``model`` on the VALIDATION loader (model's criterion);
    with ``apply`` set the model's policy to them. See :func:`choose_exit_thresholds`.

    Example:
        >>> calibrate_exit_thresholds(ee, val_loader, max_accuracy_drop=0.01)["thresholds"]
    """
    model = as_early_exit(model)
    exit_logits, labels, exit_macs = collect_validation(
        model, val_loader, example_inputs=example_inputs, device=device, max_batches=max_batches
    )
    choice = choose_exit_thresholds(
        exit_logits, labels, exit_macs=exit_macs, criterion=model.criterion,
        max_accuracy_drop=max_accuracy_drop, max_macs_fraction=max_macs_fraction, max_macs=max_macs,
    )  # fmt: skip
    choice.update(exit_names=list(model.exit_names), exit_macs=list(exit_macs), num_samples=len(labels))
    if apply:
        model.set_policy(threshold=choice["thresholds"])
    return choice
