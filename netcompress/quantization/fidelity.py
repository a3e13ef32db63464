"""How close a quantized model stays to its float original on held-out batches, and whether a bound holds.

Three metrics, each judged against the float model's outputs on the same batches:

- ``accuracy``: top-1 accuracy on the loader's labels; the bound is ``max_drop`` (float accuracy minus
  quantized accuracy, e.g. 0.01 for one point);
- ``agreement``: the share of samples whose top-1 class is the float model's; the bound is
  ``min_agreement``. For a language model's (batch, tokens, vocab) logits it is per token: the argmax
  over the vocabulary, counted at the real tokens (``attention_mask`` 1) when the batch gives a mask;
- ``embedding``: sentence embeddings (token states mean-pooled over the attention mask, as
  :func:`netcompress.evaluation.embeddings.embed` does): mean cosine to the float embedding of the same
  sentence (``min_cosine``) and nearest-neighbour agreement among the batch's sentences
  (``min_agreement``).

Every measurement also carries ``error``, a continuous distance used to rank layers (relative output MSE
for classifiers, ``1 - cosine_mean`` for embeddings), and :func:`shortfall` sums how far each bound
is missed (0 when all hold), so the closest model is known when none meets the bound.

Example:
    >>> ref = collect_outputs(model, val_batches, metric="agreement", num_batches=4)
    >>> scores = score_outputs(ref, collect_outputs(qmodel, val_batches, metric="agreement", num_batches=4))
    >>> shortfall(scores, {"min_agreement": 0.99}, "agreement"), scores["agreement"]
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.inputs import call_model, output_tensor, split_batch
from netcompress.evaluation.embeddings import compare_embeddings, mean_pool, padding_mask, padding_mask_of
from netcompress.evaluation.harness import eval_mode

METRICS = ("accuracy", "agreement", "embedding")
# bound name -> (score key it reads, direction: +1 the score must be >= bound, -1 <= bound)
BOUND_KEYS = {
    "accuracy": {"max_drop": ("drop", -1)},
    "agreement": {"min_agreement": ("agreement", 1)},
    "embedding": {"min_cosine": ("cosine_mean", 1), "min_agreement": ("nn_agreement", 1)},
}
DEFAULT_BOUNDS = {
    "accuracy": {"max_drop": 0.01},
    "agreement": {"min_agreement": 0.99},
    "embedding": {"min_cosine": 0.99},
}


@dataclasses.dataclass
class Outputs:
    """What one model produced on the measurement batches: outputs (N, ...) and labels when known."""

    metric: str
    values: torch.Tensor
    labels: torch.Tensor | None


def collect_outputs(model: nn.Module, batches: Iterable, *, metric: str, num_batches: int) -> Outputs:
    """Run ``model`` on the first ``num_batches`` batches (tensor, tuple or dict inputs).

    ``embedding`` mean-pools (N, L, H) token states over the batch's ``attention_mask``; ``agreement``
    keeps the (T, vocab) logits of the real tokens of (N, L, vocab) outputs (all N * L without a mask);
    otherwise the model's main output tensor (logits). Labels are kept when every batch has them
    (never per token).
    """
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
    values, labels = [], []
    with eval_mode(model), torch.no_grad():
        for batch in itertools.islice(batches, num_batches):
            inputs, targets = split_batch(batch)
            out = output_tensor(call_model(model, inputs)).float()
            if metric == "embedding" and out.dim() == 3:
                out = mean_pool(out, padding_mask_of(inputs, out))
            per_token = metric == "agreement" and out.dim() == 3
            if per_token:
                out = real_tokens(out, inputs)
            values.append(out)
            labels.append(targets if isinstance(targets, torch.Tensor) and not per_token else None)
    if not values:
        raise ConfigError("accuracy-aware quantization: the validation loader yielded no batches")
    known = None if any(t is None for t in labels) else torch.cat([t.reshape(-1) for t in labels])
    return Outputs(metric, torch.cat(values), known)


def real_tokens(logits: torch.Tensor, inputs: object) -> torch.Tensor:
    """The (T, vocab) rows of (N, L, vocab) ``logits`` at the tokens the ``attention_mask`` marks real.

    Example:
        >>> real_tokens(torch.zeros(2, 3, 5), {"attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}).shape
        torch.Size([3, 5])
    """
    mask = padding_mask(inputs)  # an encoder-decoder's: the decoder's
    if mask is None:
        return logits.flatten(0, 1)
    if tuple(mask.shape) != tuple(logits.shape[:2]):
        raise ConfigError(
            f"metric 'agreement': attention_mask {tuple(mask.shape)} does not match the model's "
            f"(batch, tokens) {tuple(logits.shape[:2])}"
        )
    return logits[mask.to(logits.device).bool()]


def _relative_mse(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((out - ref).pow(2).mean() / ref.pow(2).mean().clamp(min=1e-12))


def score_outputs(reference: Outputs, candidate: Outputs) -> dict[str, float]:
    """The metric's scores of ``candidate`` against the float ``reference`` (plus ``error``).

    Example:
        >>> score_outputs(ref, ref)["error"]
        0.0
    """
    ref, out = reference.values, candidate.values
    if ref.shape != out.shape:
        raise ConfigError(
            f"outputs differ in shape: float {tuple(ref.shape)} vs quantized {tuple(out.shape)}"
        )
    if ref.dim() < 2 or not ref.is_floating_point():
        raise ConfigError(
            f"metric {reference.metric!r} compares (N, classes) scores or (N, features...) embeddings; the model's "
            f"main output is {str(ref.dtype).removeprefix('torch.')} {tuple(ref.shape)} (one value per sample, or "
            "chosen actions / labels): score a wrapper that returns the scores the model decides from"
        )
    if reference.metric == "embedding":
        scores = compare_embeddings(ref.flatten(1), out.flatten(1))
        return {**scores, "error": round(1.0 - scores["cosine_mean"], 8)}
    if ref.dim() != 2 or ref.shape[1] < 2:
        raise ConfigError(
            f"metric {reference.metric!r} needs (N, classes) outputs, got {tuple(ref.shape)}; "
            "use metric='agreement' for (batch, tokens, vocab) logits (per token) or "
            "metric='embedding' for token states or embeddings"
        )
    scores = {
        "agreement": float((ref.argmax(1) == out.argmax(1)).double().mean()),
        "error": _relative_mse(ref, out),
    }
    if reference.metric == "accuracy":
        if reference.labels is None:
            raise ConfigError("metric 'accuracy' needs labelled validation batches (inputs, targets)")
        labels = reference.labels
        float_acc = float((ref.argmax(1) == labels).double().mean())
        acc = float((out.argmax(1) == labels).double().mean())
        scores.update(float_accuracy=float_acc, accuracy=acc, drop=float_acc - acc)
    return scores


def resolve_bounds(metric: str, bounds: Mapping[str, float | None]) -> dict[str, float]:
    """The bounds that apply to ``metric`` (unset ones dropped; none set: :data:`DEFAULT_BOUNDS`).

    A bound set for another metric is an error naming it (``max_drop`` with ``metric='agreement'``).
    """
    given = {k: float(v) for k, v in bounds.items() if v is not None}
    foreign = sorted(set(given) - set(BOUND_KEYS[metric]))
    if foreign:
        raise ConfigError(
            f"{', '.join(foreign)} does not apply to metric {metric!r} (its bounds: "
            f"{', '.join(BOUND_KEYS[metric])})"
        )
    return given or dict(DEFAULT_BOUNDS[metric])


def shortfall(scores: Mapping[str, float], bounds: Mapping[str, float], metric: str) -> float:
    """How far ``scores`` miss ``bounds`` of ``metric`` in all (0.0: every bound holds).

    Example:
        >>> shortfall({"cosine_mean": 0.98, "nn_agreement": 0.97},
        ...           {"min_cosine": 0.99, "min_agreement": 0.95}, "embedding")
        0.01
    """
    total = 0.0
    for name, bound in bounds.items():
        key, direction = BOUND_KEYS[metric][name]
        total += max(0.0, (bound - scores[key]) * direction)
    return round(total, 10)


def choose_metric(metric: str, bounds: Mapping[str, float | None], reference_output: torch.Tensor) -> str:
    """``metric``, or for ``auto``: accuracy when ``max_drop`` is set, embedding when ``min_cosine`` is
    set or the model returns token states (N, L, H), else top-1 agreement."""
    if metric != "auto":
        return metric
    if bounds.get("max_drop") is not None:
        return "accuracy"
    if bounds.get("min_cosine") is not None or reference_output.dim() == 3:
        return "embedding"
    return "agreement"
