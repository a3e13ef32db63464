"""How the measured-target search picks widths from its cost table, and bisects when measurements disagree.

- :func:`width_counts` is the channels a group keeps at each candidate width; under ``round_to="auto"`` a
  width whose multiple-of-8 count repeats a wider one's takes the coarsest finer multiple (4, 2, 1) that
  gives a new count: a 16-channel group keeps 16 / 12 / 8 / 4 at widths 1 / 0.75 / 0.5 / 0.25, not
  16 / 16 / 8 / 8, so a target that needs a narrow small stage (ResNet-20's 16-channel 32x32 groups,
  issue 18 session 9: the search stopped at 2.1x of 2.5x with those groups at 8) can be reached;
- :func:`greedy_widths` narrows groups, least proxy lost per unit of predicted cost saved first, until
  the table predicts the budget; :func:`give_back` widens them again while the prediction still fits;
  :func:`widths_at` is both from the unpruned state at the table's current ``scale``;
- :class:`ScaleBracket` holds what the end-to-end measurements ruled out: a model that MISSED the target
  at table scale ``s`` says the table's savings are worth less than ``s`` (a smaller scale prunes more);
  one that OVERSHOT it says they are worth more. Once both are known, :func:`bisect_widths` halves the
  bracket (geometric mean) instead of rescaling the table by the last measurement, which under a loaded
  machine jumped from a miss straight to an overshoot and back (narrow VGG, issue 18 session 8: 1.55x
  to 5.16x measured for a 2.5x target). Widths already measured are not measured again: their outcome
  narrows the bracket; when no new width assignment lies inside it (or noise made it empty), the search
  stops and keeps the met model that lost the least proxy.

Example:
    >>> bracket = ScaleBracket()
    >>> bracket.record(0.8, met=False, overshoot=False); bracket.record(0.2, met=True, overshoot=True)
    >>> bracket.middle()
    0.4
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from netcompress.pruning.channel import RoundTo, keep_count
from netcompress.pruning.latency_table import CostTable

# scale halvings tried for one new width assignment before the search stops: 2**-12 of the bracket
BISECT_STEPS = 12
# round_to="auto" in the latency search: a width whose multiple-of-8 count repeats a wider width's tries these
FINER_MULTIPLES = (4, 2, 1)


def width_counts(
    num_units: int, widths: Sequence[float], *, round_to: RoundTo, min_channels: int
) -> list[int]:
    """Channels a group of ``num_units`` keeps at each width (fractions kept, widest first).

    An int ``round_to`` rounds every count up to its multiple. ``"auto"`` rounds as
    :func:`~netcompress.pruning.channel.keep_count` does (multiples of 8 in groups of 16+), except that a
    count equal to the previous (wider) width's is taken at the coarsest of ``FINER_MULTIPLES`` that gives
    a new one: the width stays a real candidate, at the blocking least costly for the CPU kernels; where
    no multiple gives a new count the any-count one is kept (a repeat). The cost table measures each
    count, so a finer width that saves nothing is simply not chosen.

    Example:
        >>> width_counts(16, [1.0, 0.75, 0.5, 0.25], round_to="auto", min_channels=1)
        [16, 12, 8, 4]
        >>> width_counts(64, [1.0, 0.75, 0.5, 0.25], round_to="auto", min_channels=1)
        [64, 48, 32, 16]
        >>> width_counts(16, [1.0, 0.75, 0.5, 0.25], round_to=8, min_channels=1)
        [16, 16, 8, 8]
    """
    counts: list[int] = []
    for width in widths:
        ratio = 1.0 - width
        keep = keep_count(num_units, ratio, round_to=round_to, min_channels=min_channels)
        if round_to == "auto" and counts and keep >= counts[-1]:
            finer = [
                keep_count(num_units, ratio, round_to=m, min_channels=min_channels) for m in FINER_MULTIPLES
            ]
            keep = next((k for k in finer if k < counts[-1]), finer[-1])
        counts.append(keep)
    return counts


def greedy_widths(
    state: dict[str, int], table: CostTable, proxy: Mapping[str, Sequence[float]], budget: float
) -> list[dict[str, Any]]:
    """Narrow groups (in place in ``state``) until ``table.predict(state) <= budget``; returns the moves.

    Each move takes one group to any narrower width; the one losing the least proxy per unit of cost
    saved wins (ties: the smaller saving, which stops closer to the budget, then the earlier group).
    Moves that save nothing are never taken.
    """
    order = {label: k for k, label in enumerate(state)}
    moves = []
    while (now := table.predict(state)) > budget:
        best = None
        for label, index in state.items():
            for j in range(index + 1, len(table.widths)):
                saved = now - table.predict({**state, label: j})
                if saved <= 0:
                    continue
                rank = ((proxy[label][j] - proxy[label][index]) / saved, saved, order[label])
                if best is None or rank < best[0]:
                    best = (rank, label, j)
        if best is None:
            break  # every group is as narrow as the widths allow, or narrowing saves nothing
        _, label, j = best
        state[label] = j
        moves.append({"group": label, "width": table.widths[j], "predicted": table.predict(state),
                      "proxy_lost": sum(proxy[g][i] for g, i in state.items())})  # fmt: skip
    return moves


def give_back(
    state: dict[str, int], table: CostTable, proxy: Mapping[str, Sequence[float]], budget: float
) -> None:
    """Widen groups again (in place) while the prediction still fits ``budget``, largest proxy gain first."""
    while True:
        options = []
        for label, index in state.items():
            for j in range(index):
                gain = proxy[label][index] - proxy[label][j]
                if gain > 0 and table.predict({**state, label: j}) <= budget:
                    options.append((-gain, j, label))
        if not options:
            return
        _, j, label = min(options)
        state[label] = j


def widths_at(
    labels: Sequence[str], table: CostTable, proxy: Mapping[str, Sequence[float]], budget: float
) -> dict[str, int]:
    """The width indices the greedy search and give-back choose from the unpruned state at ``table.scale``."""
    state = dict.fromkeys(labels, 0)
    greedy_widths(state, table, proxy, budget)
    give_back(state, table, proxy, budget)
    return state


def state_key(state: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(state.items()))


@dataclasses.dataclass
class ScaleBracket:
    """The table scales the measurements left open: the right one lies in ``(overshoot, miss)``."""

    miss: float | None = None  # the smallest scale whose model missed the target
    overshoot: float | None = None  # the largest scale whose model beat it by more than the tolerance

    def record(self, scale: float, *, met: bool, overshoot: bool) -> None:
        if not met:
            self.miss = scale if self.miss is None else min(self.miss, scale)
        elif overshoot:
            self.overshoot = scale if self.overshoot is None else max(self.overshoot, scale)

    @property
    def closed(self) -> bool:
        """Both a miss and an overshoot measured: bisect from now on."""
        return self.miss is not None and self.overshoot is not None

    @property
    def empty(self) -> bool:
        """A miss at a scale at or below an overshoot's: the measurements contradict each other (noise)."""
        return self.closed and self.overshoot >= self.miss  # type: ignore[operator]

    def middle(self) -> float:
        return math.sqrt(self.miss * self.overshoot)  # type: ignore[operator]

    def to_dict(self) -> dict[str, float | None]:
        return {"miss_scale": self.miss, "overshoot_scale": self.overshoot}


def bisect_widths(
    bracket: ScaleBracket, labels: Sequence[str], table: CostTable, proxy: Mapping[str, Sequence[float]],
    budget: float, measured: Mapping[tuple[tuple[str, int], ...], Mapping[str, Any]],
) -> dict[str, int] | None:  # fmt: skip
    """The next width assignment to measure, at the bracket's middle scale (``table.scale`` is set to it).

    ``measured``: the rows already measured, by :func:`state_key`; a middle that gives one of them again
    narrows the bracket by that row's outcome and halves again. ``None`` when the bracket is empty or
    ``BISECT_STEPS`` halvings found no new assignment.
    """
    for _ in range(BISECT_STEPS):
        if bracket.empty:
            return None
        table.scale = bracket.middle()
        state = widths_at(labels, table, proxy, budget)
        row = measured.get(state_key(state))
        if row is None:
            return state
        bracket.record(table.scale, met=row["met"], overshoot=row["overshoot"])
    return None
