"""Early exit: classifier heads attached inside a network, so easy samples stop early.

:func:`~netcompress.dynamic.exit_points.add_early_exits` cuts a copy of the model (traced with
``torch.fx``) into ``segments`` and attaches a small head after each cut. In training the model
returns every head's logits (the last is the original classifier); in eval mode with a
``threshold`` each sample leaves at the first head whose prediction is confident enough
(criteria: :mod:`netcompress.dynamic.exit_criteria`) and only the samples still undecided run
the next segment (their rows are index-selected, the results scattered back in input order), so
the compute saved is real, not only counted.

A segment returns its *state*: one tensor, or a tuple when a value computed before the cut is
still needed after it (a skip connection crossing the cut); the first item feeds the head.

Zero Time Waste (:mod:`netcompress.dynamic.exit_ensemble`): with cascade heads (each head also reads
the previous head's logits) or an exit ensemble (each exit decides on a weighted geometric ensemble
of every exit so far), the earlier heads' raw logits travel with the state as its *carry*; routing
index-selects them with the state, and the ONNX export passes them between segment files.

Example::

    ee = add_early_exits(model, exits=["features.5"], example_inputs=torch.randn(1, 1, 8, 8))
    ee.set_policy(criterion="confidence", threshold=0.9)
    logits = ee.eval()(images)            # per-sample exit
    ee.last_exit_counts                   # e.g. [190, 66]: samples that left at each exit
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from netcompress.core.config import check_choice
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.dynamic.exit_criteria import (  # noqa: F401  (re-exported: the old home of these names)
    DEFAULT_THRESHOLDS,
    EXIT_CRITERIA,
    confident_by_entropy,
    confident_by_max_prob,
    per_exit_thresholds,
    route_exits,
)
from netcompress.dynamic.exit_heads import HEADS, PoolLinearHead, PoolMLPHead  # noqa: F401


def as_state(value: Any) -> tuple[torch.Tensor, ...]:
    """A segment's output as a tuple (a single tensor becomes a 1-tuple)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


class EarlyExitModel(nn.Module):
    """A backbone cut into ``segments`` with a head after every segment but the last.

    - training mode: ``forward`` returns the list of every exit's logits (last = original
      classifier). With ``stash_exit_logits = True`` (set by :class:`EarlyExitHook` for
      ``fit``) it returns only the final logits, so ``fit`` reports ``train_acc``, and keeps
      the list for the hook's loss (:meth:`pop_exit_logits`).
    - eval mode, ``threshold`` None: the original model (all samples through the last exit).
    - eval mode with a threshold: per-sample early exit by ``criterion``; records
      ``last_exit_counts`` (samples per exit) and ``last_exit_index`` (exit of each sample).
      It cannot be traced into one ONNX graph (the routing is data-dependent): export it with
      :func:`~netcompress.dynamic.exit_onnx.export_early_exit_onnx`.
    """

    def __init__(
        self,
        *,
        segments: Sequence[nn.Module],
        heads: Sequence[nn.Module],
        exit_names: Sequence[str],
        criterion: str = "confidence",
        threshold: float | Sequence[float] | None = None,
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
        self.threshold: float | list[float] | None = None
        self.set_policy(criterion=criterion, threshold=threshold)
        self.stash_exit_logits = False
        self.last_exit_counts: list[int] = []
        self.last_exit_index: torch.Tensor | None = None
        self._stashed: list[torch.Tensor] | None = None
        self.exit_gate: nn.Module | None = None  # learned exit decision (exit_gates.ExitGates)
        # Zero Time Waste: a geometric ensemble of the exits so far decides (exit_ensemble.ExitEnsemble)
        self.exit_ensemble: nn.Module | None = None

    @property
    def carries_logits(self) -> bool:
        """Whether exits read earlier heads' logits (cascade heads or an exit ensemble)."""
        return self.exit_ensemble is not None or any(getattr(h, "takes_previous", False) for h in self.heads)

    @property
    def num_exits(self) -> int:
        """Heads plus the final classifier."""
        return len(self.heads) + 1

    def set_policy(
        self, *, criterion: str | None = None, threshold: float | Sequence[float] | None
    ) -> EarlyExitModel:
        """Choose the eval-time exit rule: one threshold for every head, one per head (a list,
        e.g. from :func:`~netcompress.dynamic.exit_thresholds.choose_exit_thresholds`), or
        ``None`` (always the full network)."""
        if criterion is not None:
            check_choice("criterion", criterion, EXIT_CRITERIA.names())
            self.criterion = criterion
        if threshold is None:
            self.threshold = None
        elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
            self.threshold = float(threshold)
        elif isinstance(threshold, (list, tuple)):
            self.threshold = per_exit_thresholds(threshold, len(self.heads))
        else:
            raise ConfigError(f"threshold={threshold!r} must be a number, one number per exit head, or None")
        return self

    def set_gate(self, gate: nn.Module | None, threshold: Sequence[float] | None) -> EarlyExitModel:
        """Route by a learned gate (:class:`~netcompress.dynamic.exit_gates.ExitGates`) instead of the
        criterion: a sample leaves at head ``i`` when ``gate.leave(i, logits, previous_logits, t_i)``;
        ``threshold`` is one gate-probability threshold per head. ``set_gate(None, None)`` removes it.
        A gate with ``uses_features`` (:class:`~netcompress.dynamic.feature_gates.FeatureExitGates`) also
        gets the head's pooled input (``head.features``), computed once and shared with the head."""
        if gate is not None and self.carries_logits:
            raise UnsupportedModelError(
                "a learned exit gate reads one head's logits; this model's exits read earlier heads' logits "
                "too (cascade heads or an exit ensemble): route it by its criterion thresholds"
            )
        if gate is not None and getattr(gate, "num_heads", len(self.heads)) != len(self.heads):
            raise ConfigError(f"a gate for {gate.num_heads} heads on a model with {len(self.heads)} heads")
        if gate is not None and getattr(gate, "uses_features", False):
            for name, head in zip(self.exit_names, self.heads):
                if not (hasattr(head, "features") and hasattr(head, "classify")):
                    raise UnsupportedModelError(
                        f"a feature exit gate reads each head's pooled input, but the head at {name!r} "
                        f"({type(head).__name__}) has no features()/classify(): use a netcompress.dynamic.HEADS head"
                    )
        self.exit_gate = gate
        return self.set_policy(threshold=None if threshold is None else list(threshold))

    def run_segment(self, index: int, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Segment ``index`` on ``state`` (the previous segment's values; ``(x,)`` for the first)."""
        return as_state(self.segments[index](*state))

    def exit_logits(
        self, index: int, state: tuple[torch.Tensor, ...], carry: tuple[torch.Tensor, ...] = ()
    ) -> torch.Tensor:
        """Exit ``index``'s raw logits from segment ``index``'s state (the last exit: the model's
        output); a cascade head also reads the previous head's raw logits (``carry[-1]``)."""
        if index == len(self.heads):
            return state[0]
        head = self.heads[index]
        if getattr(head, "takes_previous", False):
            return head(state[0], carry[-1] if carry else None)
        return head(state[0])

    def step(
        self, index: int, state: tuple[torch.Tensor, ...], carry: tuple[torch.Tensor, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Segment ``index`` and its exit: ``(decision logits, raw logits, next state, next carry)``.

        The decision logits are what the exit answers and is judged by (the raw logits, or the exit
        ensemble's); the carry is every earlier head's raw logits when :attr:`carries_logits`."""
        state = self.run_segment(index, state)
        raw = self.exit_logits(index, state, carry)
        seen = (*carry, raw) if self.carries_logits else carry
        decision = raw if self.exit_ensemble is None else self.exit_ensemble(index, seen)
        return decision, raw, state, (seen if index < len(self.heads) else ())

    def forward_all(self, x: torch.Tensor, *, raw: bool = False) -> list[torch.Tensor]:
        """Every exit's logits for every sample (what training and the trade-off sweep use): the
        decision logits, or with ``raw`` the heads' own (what training's losses read)."""
        outputs, state, carry = [], (x,), ()
        for index in range(self.num_exits):
            decision, logits, state, carry = self.step(index, state, carry)
            outputs.append(logits if raw else decision)
        return outputs

    def pop_exit_logits(self) -> list[torch.Tensor] | None:
        """The exit logits stashed by the last training forward (then forgotten)."""
        stashed, self._stashed = self._stashed, None
        return stashed

    def forward(self, x: torch.Tensor) -> Any:
        if self.training:
            outputs = self.forward_all(x, raw=True)
            if self.stash_exit_logits:
                self._stashed = outputs
                return outputs[-1]
            return outputs
        if self.threshold is None:
            state: tuple[torch.Tensor, ...] = (x,)
            if self.exit_ensemble is not None and self.exit_ensemble.include_final:
                state = (self.forward_all(x)[-1],)
            else:
                for index in range(self.num_exits):
                    state = self.run_segment(index, state)
            if not _exporting():  # ONNX export traces this path: no Python ints from shapes
                self.last_exit_counts = [0] * len(self.heads) + [int(x.shape[0])]
                self.last_exit_index = torch.full((x.shape[0],), len(self.heads), dtype=torch.long)
            return state[0]
        if _exporting():
            raise UnsupportedModelError(
                f"EarlyExitModel with threshold={self.threshold}: per-sample routing is data-dependent "
                "and one traced ONNX graph cannot hold it (ONNX Runtime would fail on its Reshape); "
                "export it with netcompress.dynamic.export_early_exit_onnx (one file per segment, "
                "routed by OrtEarlyExit), or set_policy(threshold=None) to export the full network"
            )
        return self._forward_routed(x)

    def _forward_routed(self, x: torch.Tensor) -> torch.Tensor:
        count = x.shape[0]
        confident = EXIT_CRITERIA.get(self.criterion)
        assert self.threshold is not None
        limits = per_exit_thresholds(self.threshold, len(self.heads))
        exit_index = torch.full((count,), len(self.heads), dtype=torch.long, device=x.device)
        remaining = torch.arange(count, device=x.device)
        state: tuple[torch.Tensor, ...] = (x,)
        carry: tuple[torch.Tensor, ...] = ()
        result: torch.Tensor | None = None
        gate, previous = self.exit_gate, None
        for index in range(self.num_exits):
            features = None
            if index < len(self.heads) and gate is not None and getattr(gate, "uses_features", False):
                state = self.run_segment(index, state)
                features = self.heads[index].features(state[0])  # pooled once: the head and the gate read it
                logits = self.heads[index].classify(features)
            else:
                logits, _, state, carry = self.step(index, state, carry)
            if result is None:
                result = logits.new_empty((count, *logits.shape[1:]))
            if index == len(self.heads):
                result.index_copy_(0, remaining, logits)
                break
            if gate is None:
                done = confident(logits, limits[index])
            else:
                done = gate.leave(index, logits, previous, limits[index], features=features)
                previous = logits
            leaving = done.nonzero().squeeze(1)
            if leaving.numel():
                rows = remaining.index_select(0, leaving)
                result.index_copy_(0, rows, logits.index_select(0, leaving))
                exit_index.index_fill_(0, rows, index)
            if leaving.numel() == remaining.numel():
                break
            if leaving.numel():
                # only the undecided samples run on: this is where the compute is saved
                staying = (~done).nonzero().squeeze(1)
                state = tuple(s.index_select(0, staying) for s in state)
                carry = tuple(c.index_select(0, staying) for c in carry)
                remaining = remaining.index_select(0, staying)
                if previous is not None:
                    previous = previous.index_select(0, staying)
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
