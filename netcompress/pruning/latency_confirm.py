"""End-to-end checks of the latency search that do not hinge on one loaded timing, and the fill-up after it.

Three searches of the same method on the narrow VGG at 2.5x lower ORT batch-64 latency kept 73.38 / 69.82 /
71.17 % after the same fine-tune (benchmarks/RESULTS.md, issue 18 sessions 8 and 10): one loaded timing per
round decided which widths were accepted, and the models it accepted held 17.84 / 10.40 / 11.58 MMACs for the
same ~2.5x. Three switches of ``prune_to_target(target="latency")`` (all off by default):

- ``confirm_rounds=n`` (n > 1): each end-to-end check is ``n`` interleaved rounds of the candidate against the
  unpruned model (:func:`time_deployed_rounds`: each round's median forward per model); the MEDIAN of the
  per-round ratios decides, and the row records them (``timings``, ``ratios``, ``spread`` = (max - min) /
  median), so one slow round cannot accept or reject a width assignment;
- ``fill_up=k``: once a model met the target, up to ``k`` more checks widen it back toward the budget
  (:func:`fill_up`): the next-wider width of the group with the best proxy regained per predicted ms added
  (ties: more MACs regained per ms), kept when its measured median still reaches the target itself (the
  tolerance stays as margin for timing noise), a group's widening that missed is not tried again;
- ``finalists=k``: the ``k`` met candidates with the best proxy (ties: more MACs) are timed again together,
  interleaved with the unpruned model in the same rounds (:func:`retime`), and the best of them whose
  re-timed ratio is within the tolerance is returned (none within it: the fastest re-timed, ``met: false``).

Example:
    >>> small, summary = prune_to_target(model, x, target="latency", reduction=2.5, runtime="onnxruntime",
    ...     batch_size=64, confirm_rounds=7, fill_up=12, finalists=4)
    >>> summary["confirmation"]["finalists"][0]["ratios"]
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from netcompress.pruning.latency_table import CostTable, MeasureSpec, measure, time_forms
from netcompress.pruning.latency_widths import state_key

REFERENCE = "unpruned"


def time_deployed_rounds(
    models: Mapping[str, nn.Module], example_inputs: Any, spec: MeasureSpec
) -> dict[str, list[float]]:
    """Per interleaved round (``spec.rounds`` of them), every model's deployed-form latency in ms: the
    round's median of 3 timed forwards (10 at batch 1) after 2 warm-ups; the models rotate within a round."""
    timing = time_forms(models, example_inputs, spec)
    return {name: [float(v) for v in timing[name]["round_p50_ms"]] for name in models}


def retime(
    reference: nn.Module, candidates: Mapping[str, nn.Module], example_inputs: Any, spec: MeasureSpec, rounds: int
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every candidate against ``reference`` in the same interleaved rounds: ``{name: timing}``.

    A timing is ``ratio`` (reference / candidate: the median of the per-round ratios when ``rounds`` > 1 and
    the target is a latency, else one :func:`~netcompress.pruning.latency_table.measure` call), ``ratios``,
    ``spread`` ((max - min) / median ratio), ``timings`` (rounds) and ``unpruned`` / ``candidate``: the
    reference's median and the candidate's (the reference's over the median ratio)."""
    models = {REFERENCE: reference, **candidates}
    if spec.target == "latency" and rounds > 1:
        per = time_deployed_rounds(models, example_inputs, dataclasses.replace(spec, rounds=rounds))
    else:
        per = {name: [v] for name, v in measure(models, example_inputs, spec).items()}
    base = per[REFERENCE]
    out = {}
    for name in candidates:
        ratios = [b / max(c, 1e-12) for b, c in zip(base, per[name])]
        ratio = float(statistics.median(ratios))
        unpruned = float(statistics.median(base))
        out[name] = {"ratio": ratio, "ratios": [round(r, 4) for r in ratios], "timings": len(ratios),
                     "spread": (max(ratios) - min(ratios)) / max(ratio, 1e-12),
                     "unpruned": unpruned, "candidate": unpruned / max(ratio, 1e-12)}  # fmt: skip
    return out


def _wider(counts: Sequence[int], index: int) -> int | None:
    """The next width index wider than ``index`` that keeps a different channel count (None: none)."""
    for j in range(index - 1, -1, -1):
        if counts[j] != counts[index]:
            return j
    return None


def fill_up(
    state: Mapping[str, int], table: CostTable, proxy: Mapping[str, Sequence[float]], *,
    macs: Callable[[Mapping[str, int]], float], check: Callable[[dict[str, int]], Mapping[str, Any]],
    holds: Callable[[Mapping[str, Any]], bool], max_checks: int,
) -> dict[str, int]:  # fmt: skip
    """Widen ``state`` (a met width assignment) one measured step at a time; returns the widest that held.

    Each step takes, of every group's next-wider width not yet refused, the one regaining the most proxy per
    ms the table predicts it adds (ties: the most MACs regained per ms, then the first group); ``check``
    measures it (and records its row) and ``holds(row)`` says whether it still meets the target. A widening
    that did not hold is not tried again (from a wider state it would cost as much or more). Stops when no
    widening is left or after ``max_checks`` checks.
    """
    state, refused = dict(state), set()
    order = {label: k for k, label in enumerate(state)}
    for _ in range(max_checks):
        now, now_macs = table.predict(state), macs(state)
        moves = []
        for label, index in state.items():
            j = _wider(table.kept[label], index)
            if j is None or (label, j) in refused:
                continue
            trial = {**state, label: j}
            added = max(table.predict(trial) - now, 1e-9)
            gain = proxy[label][index] - proxy[label][j]
            moves.append(((-gain / added, -(macs(trial) - now_macs) / added, order[label]), label, j))
        if not moves:
            break
        _, label, j = min(moves)
        trial = {**state, label: j}
        if holds(check(trial)):
            state = trial
        else:
            refused.add((label, j))
    return state


def finalist_order(rows: Sequence[Mapping[str, Any]], states: Sequence[Mapping[str, int]]) -> list[int]:
    """Indices of the met rows (``states[k]``: row k's widths; a fill-up step that did not hold excluded), one
    per width assignment, best first: least proxy lost, then most MACs, then the later row."""
    best: dict[tuple, int] = {}
    for k, row in enumerate(rows):
        if row["met"] and row.get("held", True):
            best[state_key(states[k])] = k
    return sorted(best.values(), key=lambda k: (rows[k]["proxy_lost"], -rows[k].get("macs", 0.0), -k))


def choose_finalist(
    rows: Sequence[Mapping[str, Any]], states: Sequence[Mapping[str, int]], build: Callable[[Mapping[str, int]], nn.Module], reference: nn.Module,
    example_inputs: Any, spec: MeasureSpec, *, count: int, rounds: int, reduction: float, slack: float,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """Re-time the ``count`` best met rows (:func:`finalist_order`) together; returns (row index, record).

    The best-ranked one whose re-timed ratio meets ``reduction`` within ``slack`` is chosen; if none does, the
    fastest re-timed. The record lists every finalist's re-timing and says which was chosen and whether it met.
    """
    order = finalist_order(rows, states)[:count]
    timed = retime(reference, {str(k): build(states[k]) for k in order}, example_inputs, spec, rounds)
    finalists = [{"round": rows[k]["round"], "proxy_lost": rows[k]["proxy_lost"], "macs": rows[k].get("macs"),
                  **{f: timed[str(k)][f] for f in ("ratio", "ratios", "spread", "timings")},
                  "met": timed[str(k)]["ratio"] * slack >= reduction} for k in order]  # fmt: skip
    passed = [k for k, f in zip(order, finalists) if f["met"]]
    pick = passed[0] if passed else max(order, key=lambda k: timed[str(k)]["ratio"])
    record = {"finalists": finalists, "chosen_round": rows[pick]["round"], "met": bool(passed),
              "timing": timed[str(pick)]}  # fmt: skip
    return pick, record


def state_macs(variants: Any, example_inputs: Any) -> Callable[[Mapping[str, int]], float]:
    """``macs(state)``: the MACs of ``variants.build(state)`` (counted once per width assignment); keys that
    are not ``variants``' groups (the joint search's ``"int8:<layer>"`` precision moves) are left out."""
    from netcompress.evaluation.macs import count_macs

    counted: dict[tuple, float] = {}

    def macs(state: Mapping[str, int]) -> float:
        widths = {k: v for k, v in state.items() if k in variants.pruned}
        key = state_key(widths)
        if key not in counted:
            counted[key] = float(count_macs(variants.build(widths), example_inputs, per_layer=False)[0])
        return counted[key]

    return macs


def fill_up_and_confirm(
    rows: list[dict[str, Any]], results: list[tuple[dict[str, float], dict[str, int]]], pick: int, config: Any, *,
    table: CostTable, proxy: Mapping[str, Sequence[float]], macs: Callable[[Mapping[str, int]], float],
    check: Callable[..., dict[str, Any]], build: Callable[[Mapping[str, int]], nn.Module],
    reference: nn.Module, example_inputs: Any, spec: MeasureSpec, slack: float,
) -> tuple[int, dict[str, Any] | None, str | None]:  # fmt: skip
    """After the search met the target at row ``pick``: :func:`fill_up` from its widths (``config.fill_up``
    checks, recorded through ``check(state, phase)``), then :func:`choose_finalist` (``config.finalists``).
    Returns (the row chosen, the finalists' record or None, the reason when no finalist re-timed within)."""

    def holds(row: dict[str, Any]) -> bool:  # at the target itself unless fill_up_slack gives some of the tolerance
        row["held"] = row["reduction"] >= config.reduction * (1.0 - config.fill_up_slack)
        return row["held"]

    if config.fill_up:
        fill_up(results[pick][1], table, proxy, macs=macs, check=lambda s: check(s, "fill_up"), holds=holds,
                max_checks=config.fill_up)  # fmt: skip
    if not config.finalists:  # fill-up rows compete as the search's own: least proxy lost, then most MACs
        return finalist_order(rows, [s for _, s in results])[0], None, None
    pick, record = choose_finalist(
        rows, [s for _, s in results], build, reference, example_inputs, spec, count=config.finalists,
        rounds=config.confirm_rounds, reduction=config.reduction, slack=slack,
    )  # fmt: skip
    why = None if record["met"] else (
        f"no finalist re-timed within the tolerance of {config.reduction}x lower {spec.target}; the fastest "
        f"re-timed is {record['timing']['ratio']:.3g}x"
    )  # fmt: skip
    return pick, record, why
