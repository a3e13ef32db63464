"""What a model is called with: one tensor, a tuple of tensors, or a dict of tensors.

Every part of netcompress that calls a user's model (calibration, pruning, profiling, training,
distillation, export) goes through these functions, so a model with several inputs (token ids and an
attention mask, an image and a mask) works everywhere:

- a tensor is passed as the one positional argument;
- a tuple or list of tensors is passed as positional arguments, in order;
- a dict (``str`` keys) is passed as keyword arguments (Hugging Face style).

A data loader's batch is ``(inputs, targets)`` (a 2-tuple/list whose first item is any of the
three forms above), a dict holding ``labels`` or ``label`` (Hugging Face style; the rest are the
inputs), or bare inputs with no targets (a tensor, or a dict without labels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError

LABEL_KEYS = ("labels", "label")


def check_inputs(inputs: Any, where: str = "example_inputs") -> Any:
    """Return ``inputs`` unchanged if it is a tensor, a non-empty tuple/list or dict of tensors.

    Example:
        >>> check_inputs({"input_ids": torch.zeros(1, 4, dtype=torch.long)})["input_ids"].shape
        torch.Size([1, 4])
    """
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, (tuple, list)):
        if not inputs:
            raise ConfigError(
                f"{where} is an empty sequence; pass a tensor such as torch.randn(1, 3, 32, 32)"
            )
        bad = [type(v).__name__ for v in inputs if not isinstance(v, torch.Tensor)]
        if bad:
            raise ConfigError(f"{where} must hold only tensors, got {', '.join(sorted(set(bad)))}")
        return inputs
    if isinstance(inputs, Mapping):
        if not inputs:
            raise ConfigError(
                f"{where} is an empty dict; pass e.g. {{'input_ids': ids, 'attention_mask': mask}}"
            )
        bad = [str(k) for k, v in inputs.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise ConfigError(f"{where} must map argument names to tensors; not a tensor: {', '.join(bad)}")
        return inputs
    raise ConfigError(
        f"{where} must be a tensor, a tuple of tensors or a dict of tensors, got {type(inputs).__name__}"
    )


def args_kwargs(
    inputs: Any, where: str = "example_inputs"
) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    """Split ``inputs`` into the positional and keyword arguments of the model call.

    Example:
        >>> args, kwargs = args_kwargs((torch.zeros(1, 4), torch.ones(1, 4)))
        >>> len(args), kwargs
        (2, {})
    """
    inputs = check_inputs(inputs, where)
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    return tuple(inputs), {}


def call_model(model: nn.Module | Callable[..., Any], inputs: Any) -> Any:
    """Call ``model`` with ``inputs`` in whichever of the three forms they come.

    Example:
        >>> call_model(nn.Identity(), torch.ones(2)).tolist()
        [1.0, 1.0]
    """
    args, kwargs = args_kwargs(inputs, "model inputs")
    return model(*args, **kwargs)


def map_inputs(inputs: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor of ``inputs``, keeping its form (tensor, tuple or dict).

    Example:
        >>> map_inputs({"a": torch.ones(2)}, lambda t: t * 2)["a"].tolist()
        [2.0, 2.0]
    """
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(fn(v) if isinstance(v, torch.Tensor) else v for v in inputs)
    return inputs


def move_inputs(inputs: Any, device: torch.device | str) -> Any:
    """``inputs`` on ``device`` (the same object where nothing moves)."""
    return map_inputs(inputs, lambda t: t.to(device))


def input_tensors(inputs: Any) -> list[torch.Tensor]:
    """The tensors of ``inputs`` in call order (dicts in insertion order)."""
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    return [v for v in values if isinstance(v, torch.Tensor)]


def batch_size_of(inputs: Any) -> int:
    """The batch size (first dimension of the first tensor) of ``inputs``."""
    tensors = input_tensors(inputs)
    if not tensors or tensors[0].dim() == 0:
        raise ConfigError("model inputs must have a batch dimension; got a 0-d tensor or no tensor")
    return int(tensors[0].shape[0])


def slice_batch(inputs: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of every input tensor (tensors without a batch dim are kept whole)."""
    return map_inputs(inputs, lambda t: t[start:stop] if t.dim() else t)


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a loader's batch; ``targets`` is None when the batch has none.

    Example:
        >>> inputs, targets = split_batch({"input_ids": torch.zeros(2, 3), "labels": torch.tensor([0, 1])})
        >>> list(inputs), targets.tolist()
        (['input_ids'], [0, 1])
    """
    if isinstance(batch, Mapping):
        labels = [k for k in LABEL_KEYS if k in batch]
        targets = batch[labels[0]] if labels else None
        return {k: v for k, v in batch.items() if k not in LABEL_KEYS}, targets
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
        raise ConfigError(
            f"a batch must be (inputs, targets), a dict, or a tensor; got a {type(batch).__name__} of "
            f"{len(batch)} items (put several model inputs in a tuple or dict as the first item)"
        )
    return batch, None


def batch_inputs(batch: Any) -> Any:
    """The model inputs of a loader's batch (see :func:`split_batch`)."""
    return split_batch(batch)[0]


def _echoed_input(value: Any) -> bool:
    """An integer or boolean tensor (token ids, masks) or a string in an output dict: inputs passed back
    (a sentence-transformers model returns its features dict, ``input_ids`` first), never a result."""
    if isinstance(value, str):
        return True
    return isinstance(value, torch.Tensor) and not (value.is_floating_point() or value.is_complex())


def output_tensor(output: Any) -> torch.Tensor:
    """The main tensor of a model's output: itself, ``.logits``, or the first item that is no loss.

    A Hugging Face ``ModelOutput`` holds its main result first (``last_hidden_state`` of an encoder,
    ``prediction_outputs`` of PatchTSMixer, ``itm_score`` of BLIP, ``sample`` of a diffusers UNet), after
    ``loss`` when labels were passed; a later ``last_hidden_state`` is an auxiliary output. A dict's integer
    tensors and strings are inputs passed back, skipped; a sentence-transformers dict gives its
    ``sentence_embedding``.

    Example:
        >>> output_tensor((torch.ones(1), torch.zeros(1))).tolist()
        [1.0]
    """
    if isinstance(output, torch.Tensor):
        return output
    value = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(output, Mapping) and isinstance(output.get("sentence_embedding"), torch.Tensor):
        return output["sentence_embedding"]  # sentence-transformers: the features dict, inputs included
    if isinstance(output, Mapping) and output:
        main = [v for k, v in output.items() if k != "loss" and v is not None and not _echoed_input(v)]
        if main:
            return output_tensor(main[0])
    value = None if isinstance(output, Mapping) else getattr(output, "last_hidden_state", None)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(output, (tuple, list)) and output:
        return output_tensor(output[0])
    raise ConfigError(
        f"the model returned {type(output).__name__}; expected a tensor or an output holding one"
    )
