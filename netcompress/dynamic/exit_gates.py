"""A learned exit decision: per head a tiny gate predicting "this exit already agrees with the final one".

Max-softmax confidence separates "this exit's prediction equals the final exit's" from "it does
not" only weakly. :class:`ExitGates` holds one tiny classifier per head (logistic regression, or a
2-layer MLP with ``hidden`` units) on cheap features of the head's logits and the previous exit's
(:func:`gate_features`: max probability, margin top1-top2, normalised entropy, whether the argmax
equals the previous exit's, the previous exit's max probability and the probability it gives this
exit's class). :func:`fit_exit_gates` trains them on the TRAINING split (target: argmax equals the
final exit's argmax); :func:`choose_gate_thresholds` then picks one gate-probability threshold per
head on the VALIDATION split with the same greedy path + coordinate descent as
:func:`~netcompress.dynamic.exit_thresholds.choose_exit_thresholds`. ``EarlyExitModel.set_gate``
makes the batched eval forward route by the gates (only undecided rows run on).

ONNX: :class:`~netcompress.dynamic.exit_onnx.OrtEarlyExit` routes by logits criteria only; a gated
model is routed in PyTorch (exporting it raises).

Example::

    train_logits, _ = collect_exit_logits(ee, train_eval_loader)      # unaugmented training images
    gates = fit_exit_gates(train_logits)
    val_logits, val_labels = collect_exit_logits(ee, val_loader)
    pick = choose_gate_thresholds(gates, val_logits, val_labels, exit_macs=macs, max_accuracy_drop=0.01)
    ee.set_gate(gates, pick["thresholds"])                            # batched inference uses it
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.config import check_range
from netcompress.core.errors import ConfigError
from netcompress.dynamic.exit_calibration import _per_exit
from netcompress.dynamic.exit_thresholds import (
    _ALL,
    _NONE,
    _best_on_path,
    _better,
    _bound_limit,
    _levels,
    _polish_better,
    _Routing,
)

NUM_FEATURES = 6


def gate_features(logits: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """``(N, 6)`` features of one exit: max prob, margin top1-top2, normalised entropy, argmax equals the
    previous exit's, previous max prob, previous prob of this argmax (the last three 0 at the first head).

    Example:
        >>> gate_features(torch.tensor([[2.0, 0.0]]), None).shape
        torch.Size([1, 6])
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    p = log_p.exp()
    top = p.topk(2, dim=1).values
    entropy = -(p * log_p).sum(dim=1) / math.log(logits.shape[1])
    pred = p.argmax(dim=1)
    if previous is None:
        zero = torch.zeros_like(entropy)
        extra = [zero, zero, zero]
    else:
        q = F.softmax(previous.float(), dim=1)
        agree = (q.argmax(dim=1) == pred).float()
        extra = [agree, q.amax(dim=1), q.gather(1, pred[:, None]).squeeze(1)]
    return torch.stack([top[:, 0], top[:, 0] - top[:, 1], entropy, *extra], dim=1)


def gate_macs(gates: Sequence[nn.Module]) -> list[int]:
    """Multiply-accumulates per sample of each gate (its Linear layers): shared by every gate kind."""
    return [
        sum(m.in_features * m.out_features for m in g.modules() if isinstance(m, nn.Linear)) for g in gates
    ]


def check_exit_count(exit_logits: Sequence[torch.Tensor], num_heads: int, *, kind: str) -> None:
    """Gates of ``num_heads`` heads score the logits of every exit: one per head plus the final one."""
    if len(exit_logits) != num_heads + 1:
        raise ConfigError(f"{len(exit_logits)} exits' logits for {kind} of {num_heads} heads (+ final)")


class ExitGates(nn.Module):
    """One gate per head: standardised :func:`gate_features` -> Linear (or Linear-ReLU-Linear) -> logit.

    ``forward(index, logits, previous)`` is the probability that exit ``index`` agrees with the final
    exit. ``hidden=0``: logistic regression (7 parameters per head); ``hidden=16``: 129 per head.

    Example:
        >>> gates = ExitGates(num_heads=2, hidden=0)
        >>> gates(0, torch.randn(3, 10), None).shape
        torch.Size([3])
    """

    def __init__(self, num_heads: int, hidden: int = 0) -> None:
        super().__init__()
        check_range("num_heads", num_heads, 1)
        check_range("hidden", hidden, 0)
        self.hidden = hidden

        def make() -> nn.Module:
            if hidden == 0:
                return nn.Linear(NUM_FEATURES, 1)
            return nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1))

        self.gates = nn.ModuleList(make() for _ in range(num_heads))
        self.register_buffer("mean", torch.zeros(num_heads, NUM_FEATURES))
        self.register_buffer("std", torch.ones(num_heads, NUM_FEATURES))

    @property
    def num_heads(self) -> int:
        return len(self.gates)

    def gate_logit(self, index: int, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.mean[index]) / self.std[index]
        return self.gates[index](z).squeeze(1)

    def forward(self, index: int, logits: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        return torch.sigmoid(self.gate_logit(index, gate_features(logits, previous)))

    def leave(
        self,
        index: int,
        logits: torch.Tensor,
        previous: torch.Tensor | None,
        threshold: float,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """True per sample whose gate probability is ``>= threshold`` (what the routed forward asks;
        ``features``, the head's pooled input, is not read by these logit gates)."""
        return self(index, logits, previous) >= threshold

    def macs(self) -> list[int]:
        """Multiply-accumulates of each head's gate per sample (its Linear layers)."""
        return gate_macs(self.gates)

    def scores(
        self, exit_logits: Sequence[torch.Tensor], exit_features: Sequence[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Each head's gate probabilities for every sample (one ``(N,)`` tensor per head)."""
        check_exit_count(exit_logits, self.num_heads, kind="gates")
        with torch.no_grad():
            return [self(i, exit_logits[i], exit_logits[i - 1] if i else None) for i in range(self.num_heads)]


def fit_exit_gates(
    exit_logits: Sequence[torch.Tensor],
    *,
    hidden: int = 0,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> ExitGates:
    """Gates trained (full batch, Adam, binary cross-entropy) to predict, per head, whether its argmax
    equals the final exit's argmax. Fit them on the TRAINING split's exit logits (unaugmented).

    Example:
        >>> gates = fit_exit_gates([head_logits, final_logits])   # one gate, for the one head
    """
    check_range("steps", steps, 1)
    if len(exit_logits) < 2:
        raise ConfigError("fit_exit_gates needs at least one head's logits and the final exit's")
    torch.manual_seed(seed)
    gates = ExitGates(len(exit_logits) - 1, hidden=hidden)
    final = exit_logits[-1].argmax(dim=1)
    for i, gate in enumerate(gates.gates):
        features = gate_features(exit_logits[i], exit_logits[i - 1] if i else None)
        target = (exit_logits[i].argmax(dim=1) == final).float()
        gates.mean[i] = features.mean(dim=0)
        std = features.std(dim=0)
        gates.std[i] = torch.where(std > 1e-4, std, torch.ones_like(std))  # a constant feature stays ~0
        optimizer = torch.optim.Adam(gate.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(gates.gate_logit(i, features), target)
            loss.backward()
            optimizer.step()
    return gates.eval()


def route_by_scores(scores: Sequence[torch.Tensor], thresholds: Sequence[float]) -> torch.Tensor:
    """Index of the exit each sample takes: the first head whose score is ``>= `` its threshold,
    else the final exit (index ``len(scores)``).

    Example:
        >>> route_by_scores([torch.tensor([0.9, 0.2])], [0.5])
        tensor([0, 1])
    """
    if len(thresholds) != len(scores):
        raise ConfigError(f"{len(thresholds)} thresholds for {len(scores)} gated heads: give one per head")
    leave = [s >= t for s, t in zip(scores, thresholds)]
    leave.append(torch.ones_like(scores[0], dtype=torch.bool))
    return torch.stack(leave).to(torch.uint8).argmax(dim=0)


def gate_trade_off(
    gates: ExitGates,
    exit_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    exit_macs: Sequence[int],
    thresholds: Sequence[float],
    exit_features: Sequence[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Accuracy, exit shares and expected MACs of routing by ``gates`` at ``thresholds``
    (``exit_features``: each head's pooled input, for gates that read it).

    Example:
        >>> gate_trade_off(gates, test_logits, test_labels, exit_macs=macs, thresholds=[0.9, 0.8])["accuracy"]
    """
    chosen = route_by_scores(gates.scores(exit_logits, exit_features), thresholds)
    correct = torch.stack([lg.argmax(dim=1) == labels for lg in exit_logits])[
        chosen, torch.arange(len(labels))
    ]
    counts = torch.bincount(chosen, minlength=len(exit_logits))
    macs = torch.tensor([float(m) for m in exit_macs], dtype=torch.float64)
    expected = float(macs[chosen].mean())
    return {
        "accuracy": float(correct.double().mean()),
        "exit_counts": counts.tolist(),
        "exit_shares": (counts.double() / len(labels)).tolist(),
        "exit_accuracies": [float((lg.argmax(dim=1) == labels).double().mean()) for lg in exit_logits],
        "exit_macs": [int(m) for m in exit_macs],
        "expected_macs": expected,
        "macs_speedup": float(exit_macs[-1]) / expected if expected else None,
        "per_exit": _per_exit(chosen, correct, len(exit_logits)),
        "thresholds": [float(t) for t in thresholds],
    }


class _ScoreRouting(_Routing):
    """:class:`_Routing` on given per-head scores in [0, 1] (leave when score >= threshold)."""

    def __init__(self, scores, exit_logits, labels, exit_macs) -> None:
        self.u = torch.stack([s.double() for s in scores])
        self.correct = torch.stack([lg.argmax(dim=1) == labels for lg in exit_logits]).long()
        self.macs = torch.tensor([float(m) for m in exit_macs], dtype=torch.float64)
        self.heads, self.count, self.sign = len(exit_logits) - 1, len(labels), 1.0
        self.order = [row.argsort(descending=True) for row in self.u]
        self.ascending = [-row[o] for row, o in zip(self.u, self.order)]
        self.index = torch.arange(self.count)


def choose_gate_thresholds(
    gates: ExitGates,
    exit_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    exit_macs: Sequence[int],
    max_accuracy_drop: float | None = None,
    max_macs: float | None = None,
    max_levels: int = 64,
    exit_features: Sequence[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """One gate threshold per head meeting exactly one bound, chosen on these (VALIDATION) samples:
    accuracy >= the final exit's minus ``max_accuracy_drop``, or average MACs <= ``max_macs``.
    Starts from the greedy path point and from the best shared threshold, polishes both by coordinate
    descent, keeps the better (``exit_features``: for gates that read the heads' pooled input). Returns :func:`gate_trade_off`'s row plus ``final_accuracy``,
    ``accuracy_drop``, ``bound``.

    Example:
        >>> choose_gate_thresholds(gates, val_logits, val_labels, exit_macs=macs, max_accuracy_drop=0.0)
    """
    if (max_accuracy_drop is None) == (max_macs is None):
        raise ConfigError("choose_gate_thresholds: give exactly one of max_accuracy_drop, max_macs")
    if len(exit_macs) != len(exit_logits):
        raise ConfigError(f"{len(exit_macs)} MAC counts for {len(exit_logits)} exits")
    scores = gates.scores(exit_logits, exit_features)
    routing = _ScoreRouting(scores, exit_logits, labels, exit_macs)
    final_correct = int(routing.correct[-1].sum())
    if max_accuracy_drop is not None:
        check_range("max_accuracy_drop", max_accuracy_drop, 0.0)
        named = {"max_accuracy_drop": max_accuracy_drop}
    else:
        named = {"max_macs": max_macs}
    ((name, value),) = named.items()
    bound, limit = _bound_limit(routing, name, value, exit_macs[-1])
    levels = [_levels(routing.u[i], max_levels) for i in range(routing.heads)]
    on_path, _ = _best_on_path(routing, levels, bound, limit)
    shared = on_path
    for t in torch.cat(
        [torch.tensor([_ALL]), torch.linspace(0, 1, 101, dtype=torch.float64), torch.tensor([_NONE])]
    ):
        v = torch.full((routing.heads,), float(t), dtype=torch.float64)
        cost = routing.cost(v)
        if _better(bound, limit, cost, shared[1]):
            shared = (v, cost)
    v = _polish_better(routing, levels, bound, limit, (on_path[0], shared[0]))
    row = gate_trade_off(
        gates, exit_logits, labels, exit_macs=exit_macs, thresholds=v.tolist(), exit_features=exit_features
    )
    final_accuracy = final_correct / routing.count
    return {
        **row,
        "final_accuracy": final_accuracy,
        "accuracy_drop": final_accuracy - row["accuracy"],
        "bound": named,
    }
