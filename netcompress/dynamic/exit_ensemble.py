"""Zero Time Waste (Wolczyk et al., NeurIPS 2021): cascade heads and a geometric ensemble of the exits.

Two changes to an early-exit model, each usable alone:

- **cascade heads** (:class:`CascadeHead`): head ``m`` also reads head ``m - 1``'s output,
  ``logits_m = base_m(features_m) + W_m @ softmax(logits_{m-1})`` (one ``classes x classes`` matrix, zero
  at the start, so a cascade head begins as its base head), so later heads reuse the work of earlier ones.
  The previous head's PROBABILITIES, not its raw logits: a chain of raw logits through learned matrices
  diverged on ResNet-20 (seven heads, SGD lr 0.05: training loss 1e5 within three epochs), probabilities
  are bounded. They are detached by default (each head is trained for its own exit, as in the paper).
- **exit ensemble** (:class:`ExitEnsemble`): exit ``m`` answers, and is judged by, the weighted geometric
  mean of every exit so far, ``p_m(y) ∝ b_m(y) * prod_{i <= m} q_i(y) ** w_{m,i}`` with ``w >= 0`` and a
  per-class factor ``b_m``, i.e. the decision logits ``log b_m + sum_i w_{m,i} log_softmax(logits_i)``.
  Its weights are fitted on training-split logits (:func:`fit_exit_ensemble`, the negative
  log-likelihood of the ensemble, one exit at a time); exit thresholds then apply to the ensemble's
  confidence, so every threshold chooser and router works on it unchanged.

Example::

    ee = add_early_exits(model, exits=["layer1.0", "layer2.0"], example_inputs=x, cascade=True)
    train_early_exit(ee, train, config=cfg, freeze_backbone=True)      # heads (cascaded) only
    raw, labels = collect_exit_logits(ee, train_plain, raw=True)
    ee.exit_ensemble = fit_exit_ensemble(raw, labels)                  # weights on the training split
    ee.set_policy(threshold=choose_exit_thresholds(*collect_exit_logits(ee, val), ...)["thresholds"])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.config import check_range
from netcompress.core.errors import ConfigError, DataError


class CascadeHead(nn.Module):
    """``base(x) + W @ softmax(previous)`` (``W``: classes x classes, no bias, zero-initialised); the
    first head of a model gets ``previous=None`` and is its base alone.

    Example:
        >>> head = CascadeHead(PoolLinearHead(in_channels=8, num_classes=3), num_classes=3)
        >>> head(torch.randn(2, 8, 4, 4), torch.randn(2, 3)).shape
        torch.Size([2, 3])
    """

    takes_previous = True

    def __init__(self, base: nn.Module, *, num_classes: int, detach: bool = True) -> None:
        super().__init__()
        self.base = base
        self.previous = nn.Linear(num_classes, num_classes, bias=False)
        nn.init.zeros_(self.previous.weight)
        self.detach = bool(detach)

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.base(x)
        if previous is None:
            return logits
        previous = previous.detach() if self.detach else previous
        return logits + self.previous(F.softmax(previous, dim=1))


class ExitEnsemble(nn.Module):
    """Per exit ``m``: ``log b_m + sum_{i <= m} w_{m,i} * log_softmax(logits_i)`` (the decision logits).

    ``weight`` is ``(exits, exits)`` (only ``i <= m`` is read), ``log_prior`` is ``(exits, classes)``
    (``log b``). It starts as each exit alone (``w_{m,m} = 1``, the rest 0, ``b = 1``): the same
    softmax as the exit's own. With ``include_final=False`` the last exit answers with its own logits
    (the unmodified model's output, when the backbone was frozen).

    Example:
        >>> ens = ExitEnsemble(num_exits=2, num_classes=3)
        >>> ens(1, (torch.randn(4, 3), torch.randn(4, 3))).shape
        torch.Size([4, 3])
    """

    def __init__(self, *, num_exits: int, num_classes: int, include_final: bool = True) -> None:
        super().__init__()
        check_range("num_exits", num_exits, 1)
        check_range("num_classes", num_classes, 1)
        self.weight = nn.Parameter(torch.eye(num_exits))
        self.log_prior = nn.Parameter(torch.zeros(num_exits, num_classes))
        self.include_final = bool(include_final)
        self.num_exits = int(num_exits)  # a Python int: the ONNX tracer would make a shape a tensor

    def forward(self, index: int, exit_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """The decision logits of exit ``index`` from the raw logits of exits ``0..index``."""
        if len(exit_logits) != index + 1:
            raise ConfigError(f"exit {index}'s ensemble needs the logits of {index + 1} exits, got {len(exit_logits)}")
        if index == self.num_exits - 1 and not self.include_final:
            return exit_logits[-1]
        out = self.log_prior[index]
        for i, logits in enumerate(exit_logits):
            out = out + self.weight[index, i] * F.log_softmax(logits, dim=1)
        return out

    def combine(self, exit_logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Every exit's decision logits from every exit's raw logits."""
        return [self(m, exit_logits[: m + 1]) for m in range(len(exit_logits))]


def fit_exit_ensemble(
    exit_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    include_final: bool = True,
    steps: int = 300,
    lr: float = 0.05,
) -> ExitEnsemble:
    """Fit an :class:`ExitEnsemble` to raw exit logits (e.g. of the training split): per exit, the
    weights (projected onto ``w >= 0`` after every step) and the per-class prior minimise the ensemble's
    cross entropy, full-batch Adam for ``steps``. The problem is convex in ``(w, log b)``.

    Example:
        >>> raw, labels = collect_exit_logits(ee, train_loader, raw=True)
        >>> ens = fit_exit_ensemble(raw, labels); ens.weight
    """
    if not exit_logits:
        raise ConfigError("fit_exit_ensemble needs at least one exit's logits")
    labels = torch.as_tensor(labels).long()
    count, classes = exit_logits[0].shape
    if any(lg.shape != (count, classes) for lg in exit_logits) or labels.shape != (count,):
        raise DataError(
            f"fit_exit_ensemble: every exit needs ({count}, {classes}) logits and {count} labels; got "
            f"{[tuple(lg.shape) for lg in exit_logits]} and {tuple(labels.shape)}"
        )
    check_range("steps", steps, 1)
    ensemble = ExitEnsemble(num_exits=len(exit_logits), num_classes=classes, include_final=include_final)
    log_probs = torch.stack([F.log_softmax(lg.detach().float(), dim=1) for lg in exit_logits])  # (E, N, C)
    with torch.no_grad():
        for m in range(len(exit_logits)):
            if m == len(exit_logits) - 1 and not include_final:
                continue
            with torch.enable_grad():
                weight = torch.zeros(m + 1)
                weight[m] = 1.0
                weight.requires_grad_(True)
                prior = torch.zeros(classes, requires_grad=True)
                optimizer = torch.optim.Adam([weight, prior], lr=lr)
                for _ in range(steps):
                    optimizer.zero_grad()
                    logits = torch.einsum("e,enc->nc", weight, log_probs[: m + 1]) + prior
                    F.cross_entropy(logits, labels).backward()
                    optimizer.step()
                    with torch.no_grad():
                        weight.clamp_(min=0.0)
            ensemble.weight[m].zero_()
            ensemble.weight[m, : m + 1] = weight.detach()
            ensemble.log_prior[m] = prior.detach()
    return ensemble.requires_grad_(False)


def cascade_heads(heads: Sequence[nn.Module], *, num_classes: int, detach: bool = True) -> list[nn.Module]:
    """Every head but the first (which has no previous head) wrapped in a :class:`CascadeHead`."""
    return [h if i == 0 else CascadeHead(h, num_classes=num_classes, detach=detach) for i, h in enumerate(heads)]


def attach_exit_ensemble(
    model: nn.Module,
    loader: Iterable,
    *,
    include_final: bool = True,
    device: str = "cpu",
    max_batches: int | None = None,
) -> ExitEnsemble:
    """Fit an exit ensemble on ``loader``'s raw exit logits (the training split) and set it as
    ``model.exit_ensemble``; return it.

    Example:
        >>> attach_exit_ensemble(ee, train_loader, include_final=False).weight
    """
    from netcompress.dynamic.early_exit import as_early_exit
    from netcompress.dynamic.exit_evaluation import collect_exit_logits

    model = as_early_exit(model)
    model.exit_ensemble = None  # the raw logits, not an older ensemble's
    raw, labels = collect_exit_logits(model, loader, device=device, max_batches=max_batches, raw=True)
    model.exit_ensemble = fit_exit_ensemble(raw, labels, include_final=include_final).to(device)
    return model.exit_ensemble
