"""Exit gates on the exits' FEATURES: per head a tiny classifier on the pooled tensor the head reads.

:class:`~netcompress.dynamic.exit_gates.ExitGates` sees only six numbers derived from the head's
logits (and the previous head's). :class:`FeatureExitGates` also reads the head's pooled input
(``head.features(x)``, e.g. the 4 x 4-pooled map of ``pool_grid_linear``, flattened: 256-1024 values
on ResNet-20), standardised, optionally with the six logit features appended, through a logistic
regression (``hidden=0``) or a 2-layer MLP; target as before: "this exit's argmax equals the final
exit's". :func:`fit_feature_gates` fits them (full batch, Adam, BCE) on samples that are NOT the
ones the thresholds are chosen on; :func:`~netcompress.dynamic.exit_gates.choose_gate_thresholds`
and :func:`~netcompress.dynamic.exit_gates.gate_trade_off` take them with ``exit_features=``.
``EarlyExitModel.set_gate`` routes with them in the batched forward (the head's pooling is computed
once and shared with the gate). :meth:`FeatureExitGates.macs` and :func:`gated_exit_macs` count what
the gates add to each exit's cost.

Example::

    feats, logits, labels = collect_exit_features(ee, train_eval_loader)   # unaugmented, not validation
    gates = fit_feature_gates(feats, logits)
    vf, vl, vy = collect_exit_features(ee, val_loader)
    macs = gated_exit_macs(exit_path_macs(ee, x[:1]), gates)
    pick = choose_gate_thresholds(gates, vl, vy, exit_macs=macs, max_accuracy_drop=0.01, exit_features=vf)
    ee.set_gate(gates, pick["thresholds"])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.config import check_range
from netcompress.core.errors import ConfigError, DataError, UnsupportedModelError
from netcompress.dynamic.early_exit import as_early_exit
from netcompress.dynamic.exit_gates import NUM_FEATURES, check_exit_count, gate_features, gate_macs
from netcompress.evaluation.harness import eval_mode


class _HeadGate(nn.Module):
    """Standardise -> Linear (or Linear-ReLU-Linear) -> one logit."""

    def __init__(self, size: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))
        if hidden == 0:
            self.net: nn.Module = nn.Linear(size, 1)
        else:
            self.net = nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(1)


class FeatureExitGates(nn.Module):
    """One gate per head on ``[head's pooled features, gate_features(logits, previous)]``.

    ``feature_sizes``: the width of each head's ``features`` output. ``logit_features=False`` reads
    the pooled features only.

    Example:
        >>> gates = FeatureExitGates([16, 32], hidden=0)
        >>> gates(1, torch.randn(3, 10), torch.randn(3, 10), torch.randn(3, 32)).shape
        torch.Size([3])
    """

    uses_features = True  # EarlyExitModel's routed forward passes each head's pooled input

    def __init__(self, feature_sizes: Sequence[int], *, hidden: int = 0, logit_features: bool = True) -> None:
        super().__init__()
        if not feature_sizes:
            raise ConfigError("FeatureExitGates needs one feature size per exit head; got none")
        for size in feature_sizes:
            check_range("feature_sizes", size, 1)
        check_range("hidden", hidden, 0)
        self.hidden, self.logit_features = hidden, bool(logit_features)
        self.feature_sizes = [int(s) for s in feature_sizes]
        extra = NUM_FEATURES if logit_features else 0
        self.gates = nn.ModuleList(_HeadGate(s + extra, hidden) for s in self.feature_sizes)

    @property
    def num_heads(self) -> int:
        return len(self.gates)

    def inputs(
        self, index: int, logits: torch.Tensor, previous: torch.Tensor | None, features: torch.Tensor
    ) -> torch.Tensor:
        """The gate's input row per sample (before standardisation)."""
        if features.dim() != 2 or features.shape[1] != self.feature_sizes[index]:
            raise ConfigError(
                f"feature gate {index}: features of shape {tuple(features.shape)}, expected "
                f"(N, {self.feature_sizes[index]}) (the head's pooled input, flattened)"
            )
        if not self.logit_features:
            return features.float()
        return torch.cat([features.float(), gate_features(logits, previous)], dim=1)

    def forward(
        self, index: int, logits: torch.Tensor, previous: torch.Tensor | None, features: torch.Tensor
    ) -> torch.Tensor:
        return torch.sigmoid(self.gates[index](self.inputs(index, logits, previous, features)))

    def leave(
        self,
        index: int,
        logits: torch.Tensor,
        previous: torch.Tensor | None,
        threshold: float,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """True per sample whose gate probability is ``>= threshold`` (what the routed forward asks)."""
        if features is None:
            raise ConfigError(f"feature gate {index} needs the head's pooled features (features=...)")
        return self(index, logits, previous, features) >= threshold

    def macs(self) -> list[int]:
        """Multiply-accumulates of each head's gate per sample (its Linear layers)."""
        return gate_macs(self.gates)

    def scores(
        self, exit_logits: Sequence[torch.Tensor], exit_features: Sequence[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Each head's gate probabilities for every sample (one ``(N,)`` tensor per head)."""
        check_exit_count(exit_logits, self.num_heads, kind="feature gates")
        if exit_features is None or len(exit_features) != self.num_heads:
            got = "none" if exit_features is None else len(exit_features)
            raise ConfigError(
                f"feature gates of {self.num_heads} heads need one features tensor per head; got {got}"
            )
        with torch.no_grad():
            return [
                self(i, exit_logits[i], exit_logits[i - 1] if i else None, exit_features[i])
                for i in range(self.num_heads)
            ]


def fit_feature_gates(
    exit_features: Sequence[torch.Tensor],
    exit_logits: Sequence[torch.Tensor],
    *,
    hidden: int = 0,
    logit_features: bool = True,
    steps: int = 300,
    lr: float = 0.01,
    weight_decay: float = 0.1,
    seed: int = 0,
) -> FeatureExitGates:
    """Feature gates trained (full batch, Adam with L2 ``weight_decay``, BCE) to predict, per head,
    whether its argmax equals the final exit's. Fit them on samples the thresholds are NOT chosen on.
    ``weight_decay=0.1``: the best of 0.01 / 0.1 / 1 by validation AUC on ResNet-20's exits (inputs of
    256-1030 values fitted on 10k images; at 1e-3 they over-fit).

    Example:
        >>> gates = fit_feature_gates([head_features], [head_logits, final_logits])
    """
    check_range("steps", steps, 1)
    if len(exit_logits) < 2 or len(exit_features) != len(exit_logits) - 1:
        raise ConfigError(
            f"fit_feature_gates needs one features tensor per head and every exit's logits (final last); "
            f"got {len(exit_features)} features, {len(exit_logits)} logits"
        )
    torch.manual_seed(seed)
    gates = FeatureExitGates(
        [f.shape[1] for f in exit_features], hidden=hidden, logit_features=logit_features
    )
    final = exit_logits[-1].argmax(dim=1)
    for i, gate in enumerate(gates.gates):
        x = gates.inputs(i, exit_logits[i], exit_logits[i - 1] if i else None, exit_features[i])
        target = (exit_logits[i].argmax(dim=1) == final).float()
        gate.mean.copy_(x.mean(dim=0))
        std = x.std(dim=0)
        gate.std.copy_(torch.where(std > 1e-4, std, torch.ones_like(std)))  # a constant input stays ~0
        optimizer = torch.optim.Adam(gate.net.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            optimizer.zero_grad()
            F.binary_cross_entropy_with_logits(gate(x), target).backward()
            optimizer.step()
    return gates.eval()


def gated_exit_macs(exit_macs: Sequence[int], gates: nn.Module) -> list[int]:
    """Each exit's MACs plus the gates a sample leaving there has run (every gate for the final exit).

    Example:
        >>> gated_exit_macs([100, 200, 400], FeatureExitGates([4, 4]))    # 10 MACs per gate
        [110, 220, 420]
    """
    per_gate = list(gates.macs())
    if len(per_gate) != len(exit_macs) - 1:
        raise ConfigError(f"{len(per_gate)} gates for {len(exit_macs)} exits (one gate per head)")
    spent = [sum(per_gate[: i + 1]) for i in range(len(per_gate))] + [sum(per_gate)]
    return [int(m) + s for m, s in zip(exit_macs, spent)]


def collect_exit_features(
    model: nn.Module, loader: Iterable, *, device: str = "cpu", max_batches: int | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Each head's pooled features, every exit's logits (final last) and the labels (eval mode).

    Example:
        >>> feats, logits, labels = collect_exit_features(ee, val_loader, max_batches=2)
    """
    ee = as_early_exit(model)
    for name, head in zip(ee.exit_names, ee.heads):
        if not (hasattr(head, "features") and hasattr(head, "classify")):
            raise UnsupportedModelError(
                f"collect_exit_features: the head at {name!r} ({type(head).__name__}) has no features()/classify()"
            )
    feats: list[list[torch.Tensor]] = [[] for _ in ee.heads]
    logits: list[list[torch.Tensor]] = [[] for _ in range(ee.num_exits)]
    labels = []
    with eval_mode(ee), torch.no_grad():
        for index, (inputs, targets) in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            state = (inputs.to(device),)
            for i in range(ee.num_exits):
                state = ee.run_segment(i, state)
                if i < len(ee.heads):
                    f = ee.heads[i].features(state[0])
                    feats[i].append(f.float().cpu())
                    logits[i].append(ee.heads[i].classify(f).float().cpu())
                else:
                    logits[i].append(state[0].float().cpu())
            labels.append(torch.as_tensor(targets).cpu())
    if not labels:
        raise DataError("collect_exit_features: the loader yielded no batches")
    return [torch.cat(f) for f in feats], [torch.cat(lg) for lg in logits], torch.cat(labels)
