"""Where an early-exit model's time goes, per form and batch size: the measured cost of each exit's PATH.

``path k`` runs segments 0..k and heads 0..k (with the ensemble and the carried logits), every sample of the
batch, no routing: what a sample leaving at exit k costs. ``backbone k`` runs the segments only (the
unmodified model cut after exit k; torch forms). From them ``early_exit_latency.py --paths``:

- predicts a routed model's time from its exit shares, ``sum_k share_k * path_k``; measured minus predicted
  is what the routing itself costs (index_select of the state, nonzero, Python per exit);
- with ``--time-costs``, chooses the thresholds on the VALIDATION split with the measured path times as the
  exit costs instead of MACs (``choose_exit_thresholds`` minimises the expected cost under the accuracy
  bound), one choice per (form, batch size), each then timed against the unmodified model and read once on test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class TorchPath:
    """Segments (and heads, with ``heads``) 0..k of an EarlyExitModel on every sample."""

    def __init__(self, ee: Any, k: int, *, heads: bool = True) -> None:
        self.ee, self.k, self.heads = ee, k, heads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        state: tuple[torch.Tensor, ...] = (x,)
        carry: tuple[torch.Tensor, ...] = ()
        for i in range(self.k + 1):
            if self.heads:
                _, _, state, carry = self.ee.step(i, state, carry)
            else:
                state = self.ee.run_segment(i, state)
        return state[0]


class OrtPath:
    """Segment files 0..k of an OrtEarlyExit (each file computes its exit's logits too) on every sample."""

    def __init__(self, runner: Any, k: int) -> None:
        self.runner, self.k = runner, k

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        state = [np.ascontiguousarray(x.numpy())]
        logits = state[0]
        for i in range(self.k + 1):
            logits, state = self.runner._run(i, state)
        return logits


def path_models(form: str, routed: Any, exits: int) -> dict[str, Any]:
    """``{"path k": callable}`` (and ``"backbone k"`` for the torch forms) for one routed model."""
    if form == "ort":
        return {f"path {k}": OrtPath(routed, k) for k in range(exits)}
    out = {f"path {k}": TorchPath(routed, k) for k in range(exits)}
    out.update({f"backbone {k}": TorchPath(routed, k, heads=False) for k in range(exits)})
    return out


def predicted_ms(shares: list[float], path_ms: list[float]) -> float:
    """Expected per-batch time of a routing leaving ``shares`` at each exit, from the path times."""
    return float(sum(s * t for s, t in zip(shares, path_ms)))
