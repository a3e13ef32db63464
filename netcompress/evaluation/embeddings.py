"""How far a compressed sentence encoder's embeddings moved from the original's.

A sentence encoder is judged by what its users rely on: the direction of each embedding (cosine to
the original's embedding of the same sentence) and the neighbourhoods (whether a sentence's nearest
neighbour among the others is still the same one).

Example:
    >>> ref = embed(original, loader); new = embed(compressed, loader)
    >>> compare_embeddings(ref, new)["nn_agreement"]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from netcompress.core.inputs import batch_inputs, call_model, output_tensor
from netcompress.evaluation.harness import eval_mode


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the token states over the real (mask 1) tokens: (N, L, H) -> (N, H).

    Example:
        >>> mean_pool(torch.ones(1, 3, 2), torch.tensor([[1, 1, 0]])).tolist()
        [[1.0, 1.0]]
    """
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)


def padding_mask(inputs: Any) -> torch.Tensor | None:
    """The (N, L) padding mask of the model's token outputs: an encoder-decoder's (``decoder_input_ids``
    given) outputs follow the decoder, so its ``decoder_attention_mask`` (none: every position is real);
    otherwise the ``attention_mask``.

    Example:
        >>> padding_mask({"input_ids": ids, "attention_mask": m, "decoder_input_ids": d}) is None
        True
    """
    if not isinstance(inputs, Mapping):
        return None
    decoder = "decoder_input_ids" in inputs or "decoder_inputs_embeds" in inputs
    mask = inputs.get("decoder_attention_mask" if decoder else "attention_mask")
    return mask if isinstance(mask, torch.Tensor) else None


def padding_mask_of(inputs: Any, hidden: torch.Tensor) -> torch.Tensor | None:
    """:func:`padding_mask` where it is as long as ``hidden``'s (N, L, ...) positions, else None."""
    mask = padding_mask(inputs)
    return mask if mask is not None and mask.dim() == 2 and mask.shape[1] == hidden.shape[1] else None


def embed(model: nn.Module | Any, batches: Iterable[Any], *, pool: bool = True) -> torch.Tensor:
    """Embeddings of every batch, concatenated; token states are mean-pooled over the attention mask.

    ``model`` is a module or any callable (an ONNX Runtime wrapper); a model that already returns
    (N, H) sentence embeddings is taken as is.
    """
    outs = []
    context = eval_mode(model) if isinstance(model, nn.Module) else torch.inference_mode()
    with context, torch.inference_mode():
        for batch in batches:
            inputs = batch_inputs(batch)
            hidden = output_tensor(call_model(model, inputs))
            if pool and hidden.dim() == 3:
                hidden = mean_pool(hidden, padding_mask_of(inputs, hidden))
            outs.append(hidden.float())
    return torch.cat(outs)


def compare_embeddings(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """Cosine of each candidate embedding to its reference (mean, min) and nearest-neighbour agreement.

    Nearest neighbour: for each sentence, the most cosine-similar OTHER sentence of the same set;
    agreement is the share of sentences whose neighbour is the same under both encoders.

    Example:
        >>> e = torch.eye(3)
        >>> compare_embeddings(e, e)["cosine_mean"]
        1.0
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"embeddings differ in shape: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    ref = nn.functional.normalize(reference.double(), dim=1)
    new = nn.functional.normalize(candidate.double(), dim=1)
    cosine = (ref * new).sum(dim=1)
    agreement = float("nan")
    if len(ref) > 2:
        eye = torch.eye(len(ref), dtype=torch.bool)
        nn_ref = (ref @ ref.T).masked_fill(eye, -2).argmax(dim=1)
        nn_new = (new @ new.T).masked_fill(eye, -2).argmax(dim=1)
        agreement = float((nn_ref == nn_new).double().mean())
    return {
        "cosine_mean": round(float(cosine.mean()), 6),
        "cosine_min": round(float(cosine.min()), 6),
        "nn_agreement": agreement,
    }


def embedding_metrics(
    model: nn.Module | Any, loader: Iterable[Any], *, max_batches: int | None = None
) -> dict[str, Any]:
    """How far ``model``'s embeddings are from the references a loader's batches carry as targets.

    Batches are ``(inputs, reference_embeddings)`` (the ``sentences`` data set's test split). Returns
    :func:`compare_embeddings`'s figures plus the fields a recipe's stage row needs: ``accuracy`` is the
    nearest-neighbour agreement (a share of sentences, like an accuracy; ``accuracy_metric`` says so),
    ``loss`` is ``1 - cosine_mean``.

    Example:
        >>> embedding_metrics(pruned, bundle_test_loader)["cosine_mean"]
    """
    from netcompress.core.inputs import split_batch

    inputs, references = [], []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, ref = split_batch(batch)
        if ref is None:
            raise ValueError("embedding_metrics needs batches of (inputs, reference embeddings)")
        inputs.append(x)
        references.append(ref.float())
    scores = compare_embeddings(torch.cat(references), embed(model, inputs))
    return {
        **scores,
        "accuracy": scores["nn_agreement"],
        "accuracy_metric": "nn_agreement",
        "loss": round(1.0 - scores["cosine_mean"], 6),
        "num_samples": sum(len(r) for r in references),
    }
