"""Check that a model takes its inputs before any work starts: a recipe's model on one sample of its data
(:func:`check_model_on_data`), and a public verb's ``model`` and ``example_inputs`` (:func:`check_model_call`).

A user's model (a factory, a checkpoint) and a user's data set meet for the first time in a run. Called
on one test sample before the run folder is made, the model either answers with one score per class or
the run stops with one line naming the model, the inputs it was given and what went wrong, instead of a
traceback from deep inside the first step (or, for a model with more outputs than the data has classes,
a run that trains and reports silently wrong numbers).

The verbs (``prune_channels``, ``prune_to_target``, ``prune_transformer``, ``export_onnx``, ``profile``,
``quantize``, ``fit``/``distill``) refuse a model argument that is no model (a class, a state dict, a path),
has no values (meta device) or NaN/inf weights, and example inputs the model cannot take (a list of tensors
meant as one batch, integer images, a wrong channel count, a misspelled keyword), each with a ConfigError
naming the verb, the argument and what was expected, before any work.

Example:
    >>> check_model_on_data(model, torch.randn(1, 3, 32, 32), num_classes=10, model_name="mynet.py:build")
    >>> check_model_call(model, torch.randn(1, 3, 32, 32), where="prune_channels")
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError, NetcompressError
from netcompress.core.inputs import call_model, check_inputs, input_tensors, output_tensor


def describe_inputs(inputs: Any) -> str:
    """``float32 (1, 3, 32, 32)``, ``(float32 (1, 3), int64 (1, 5))`` or ``{input_ids: int64 (1, 12)}``.

    Example:
        >>> describe_inputs({"input_ids": torch.zeros(1, 4, dtype=torch.long)})
        '{input_ids: int64 (1, 4)}'
    """

    def one(t: torch.Tensor) -> str:
        return f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"

    if isinstance(inputs, torch.Tensor):
        return one(inputs)
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k}: {describe_inputs(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(describe_inputs(v) for v in inputs) + ")"
    return type(inputs).__name__


def model_label(spec: dict[str, Any]) -> str:
    """How a recipe's model spec is named in messages: ``model.factory mynet.py:build`` etc."""
    for key in ("factory", "name", "checkpoint"):
        if spec.get(key):
            return f"model.{key} {spec[key]}"
    return "the model"


def check_model_on_data(
    model: nn.Module, example_inputs: Any, *, num_classes: int, model_name: str, data_name: str = "the data"
) -> None:
    """Call ``model`` on ``example_inputs`` (one sample of the data) without gradients, in eval mode.

    A failing call, or an output of shape ``(1, C)`` with ``C != num_classes`` (when the data set has
    classes), is a :class:`ConfigError` naming the model, the data and the inputs' dtypes and shapes.
    The model's train/eval mode is restored.
    """
    shown = describe_inputs(example_inputs)
    output, exc = _call_in_eval(model, example_inputs)
    if exc is not None:
        raise ConfigError(
            f"{model_name} fails on one sample of {data_name} (inputs {shown}): {_first_line(exc)}; "
            "check the model's expected input shape and dtype against the data"
        ) from None
    try:
        scores = output_tensor(output)
    except Exception:  # noqa: BLE001 - an output netcompress cannot read at all
        scores = None
    if not isinstance(scores, torch.Tensor):
        raise ConfigError(
            f"{model_name} returned a {type(output).__name__} for inputs {shown}; expected a tensor of class "
            "scores (or an output with .logits)"
        )
    if num_classes <= 0 or scores.dim() != 2:
        return
    if num_classes == 1:
        raise ConfigError(
            f"{data_name} holds one class only (every label is 0); a classifier needs 2 or more"
        )
    count = int(scores.shape[-1])
    if count != num_classes:
        raise ConfigError(
            f"{model_name} gives {count} class scores per sample but {data_name} has {num_classes} classes "
            f"(labels 0-{num_classes - 1}); build the model with {num_classes} outputs (e.g. "
            f"model.kwargs.num_classes={num_classes})"
            + (
                f", or, if the data lacks some classes, give the data set num_classes: {count} (tensors, factory)"
                if count > num_classes
                else ""
            )
            + _scored_item(output)
        )


def _scored_item(output: Any) -> str:
    """Which part of a several-output model netcompress scored, for the class-count message: a tuple's first
    item, a dict's ``logits`` or first entry (a two-head model returning ``(aux, logits)`` is easy to misread)."""
    from collections.abc import Mapping

    if isinstance(output, (tuple, list)) and len(output) > 1:
        return (
            f"; the model returns {len(output)} outputs and the first one is scored as class scores: "
            "name the one to score (recipe model: {output: 1}; Python nc.select_output(model, 1)) or return the "
            "classifier's logits first"
        )
    if isinstance(output, Mapping) and len(output) > 1 and "logits" not in output:
        first = next(iter(output))
        return (
            f"; the model returns a dict without 'logits', so its first entry {first!r} is scored as class "
            "scores: name the one to score (recipe model: {output: KEY}; Python nc.select_output(model, KEY)) or "
            "name the classifier's output 'logits'"
        )
    return ""


def check_last_batch(model: nn.Module, example_inputs: Any, *, train_size: int, batch_size: int) -> None:
    """A training split that leaves a last batch of one sample, for a model that cannot train on one
    (BatchNorm over a single value per channel), is a ConfigError naming the counts and a batch size that
    avoids it, instead of a ValueError in the first epoch. Tried on a copy, in train mode.

    Example:
        >>> check_last_batch(nn.BatchNorm1d(4), torch.randn(1, 4), train_size=17, batch_size=16)
        Traceback (most recent call last):
        ConfigError: the training split holds 17 samples = 1 batch(es) of 16 + 1, ...
    """
    if batch_size <= 1 or train_size <= 1 or train_size % batch_size != 1:
        return
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    try:
        call_model(copy.deepcopy(model).train(), example_inputs)  # a batch of one, as the last one will be
    except ValueError as exc:
        if "more than 1 value per channel" not in str(exc):
            return
    else:
        return
    fits = [
        b
        for b in (batch_size - 1, batch_size + 1, batch_size - 2, batch_size + 2)
        if b > 1 and train_size % b != 1
    ]
    raise ConfigError(
        f"the training split holds {train_size} samples = {train_size // batch_size} batch(es) of {batch_size} + 1, "
        "and the model's BatchNorm cannot train on a batch of one sample; choose another data.batch_size "
        f"(e.g. {fits[0]})"
    )


def check_model(model: Any, *, where: str, argument: str = "model") -> nn.Module:
    """Return ``model`` if it is an ``nn.Module`` instance with values (not on the meta device) and finite
    parameters; else a ConfigError naming ``where``, the argument and what to pass instead.

    Example:
        >>> check_model(nn.Linear, where="prune_channels")
        Traceback (most recent call last):
        ConfigError: prune_channels: model is the class Linear, not a model; build one first (Linear(...))
    """
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise ConfigError(
            f"{where}: {argument} is the class {model.__name__}, not a model; build one first ({model.__name__}(...))"
        )
    if isinstance(model, Mapping):
        raise ConfigError(
            f"{where}: {argument} is a {type(model).__name__} (a state_dict?), not a model; build the model and "
            "load it with model.load_state_dict(...) first"
        )
    if isinstance(model, (str, os.PathLike)):
        raise ConfigError(
            f"{where}: {argument} is a path ({os.fspath(model)!r}), not a model; load it first "
            "(nc.load(path) for a netcompress .nc file)"
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where}: {argument} must be a torch.nn.Module, got {type(model).__name__}")
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in named:
            if tensor.is_meta:
                raise ConfigError(
                    f"{where}: {argument}'s {kind} {name!r} is on the meta device (a shape, no values); "
                    "load the weights first (model.to_empty(device='cpu'), then load_state_dict)"
                )
            if kind == "parameter" and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ConfigError(
                    f"{where}: {argument}'s parameter {name!r} holds NaN/inf values (a diverged training?); "
                    "load a good checkpoint first"
                )
    return model


def check_loader(loader: Any, *, where: str, argument: str) -> None:
    """A loader argument must yield batches: a DataLoader or a list of batches, not one tensor (which would
    be read row by row as batches) nor a dict. ``None`` passes (the caller decides whether it is needed)."""
    if loader is None:
        return
    if isinstance(loader, (torch.Tensor, Mapping)):
        raise ConfigError(
            f"{where}: {argument} must yield batches ((inputs, targets) or inputs: a DataLoader or a list of "
            f"batches), got a {type(loader).__name__}; wrap one batch as [batch]"
        )
    if not hasattr(loader, "__iter__"):
        raise ConfigError(f"{where}: {argument} must be an iterable of batches, got {type(loader).__name__}")


def check_model_call(model: Any, example_inputs: Any, *, where: str, argument: str = "example_inputs") -> Any:
    """Check ``model`` (:func:`check_model`) and ``example_inputs`` (a tensor, a tuple of tensors or a dict of
    tensors), then call the model once on them in eval mode without gradients (its mode restored) and return
    the output. A failing call is a ConfigError naming ``where``, the inputs' dtypes and shapes, the model's
    error and, where it can tell, the likely mistake (see :func:`call_hint`)."""
    check_model(model, where=where)
    check_inputs(example_inputs, where=f"{where}: {argument}")
    output, exc = _call_in_eval(model, example_inputs)
    if exc is not None:
        raise ConfigError(f"{where}: {argument} {_explain(model, example_inputs, exc)}") from None
    return output


def call_or_explain(model: nn.Module, inputs: Any, *, where: str) -> Any:
    """Call ``model`` on ``inputs`` as it is (mode and gradients as they are, e.g. a training step); a
    failure (not a netcompress error, not out-of-memory) is a ConfigError as :func:`check_model_call` words it."""
    try:
        return call_model(model, inputs)
    except (NetcompressError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model on the user's inputs
        raise ConfigError(f"{where} {_explain(model, inputs, exc)}") from exc


def call_hint(model: nn.Module, inputs: Any, exc: BaseException) -> str:
    """The likely mistake behind a model failing on ``inputs``, or the general advice."""
    text = str(exc)
    if isinstance(inputs, (tuple, list)) and len(inputs) > 1 and "positional argument" in text:
        return (
            f"a {type(inputs).__name__} is passed as {len(inputs)} separate positional arguments; for one batch "
            "pass one tensor (torch.stack or torch.cat the samples)"
        )
    if isinstance(inputs, Mapping):
        names = _forward_names(model)
        unknown = [k for k in inputs if names and k not in names]
        if unknown:
            close = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
            meant = [f"{k!r} (did you mean {c[0]!r}?)" if c else repr(k) for k, c in close.items()]
            return f"forward takes no argument {', '.join(meant)}; its arguments: {', '.join(names)}"
        if "keyword argument" in text:
            return f"a dict's keys are passed as keyword arguments: check the names ({', '.join(inputs)})"
    if any(not t.is_floating_point() for t in input_tensors(inputs)) and ("type" in text or "dtype" in text):
        return (
            "integer inputs reach a layer that takes floats: pass float tensors (x.float()) for images/audio"
        )
    return "check the model's expected input shape and dtype"


def _forward_names(model: nn.Module) -> list[str]:
    """The named parameters of ``model.forward`` (none known when it takes only ``*args``/``**kwargs``)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _explain(model: nn.Module, inputs: Any, exc: BaseException) -> str:
    return f"({describe_inputs(inputs)}) do not fit the model: {_first_line(exc)}; {call_hint(model, inputs, exc)}"


def _call_in_eval(model: nn.Module, inputs: Any) -> tuple[Any, Exception | None]:
    """(output, None), or (None, the exception) when the model fails; eval mode, no gradients, mode restored.

    A model holding quantizers that still observe (or learn their first scale) would change with the call:
    a copy is called instead, so a check never alters the model it checks."""
    if any(
        getattr(m, "observing", False) or getattr(m, "initialised", True) is False for m in model.modules()
    ):
        model = copy.deepcopy(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return call_model(model, inputs), None
    except Exception as exc:  # noqa: BLE001 - any failure of the user's model on the user's inputs
        return None, exc
    finally:
        model.train(was_training)


def _first_line(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"


__all__ = [
    "call_or_explain",
    "check_last_batch",
    "check_loader",
    "check_model",
    "check_model_call",
    "check_model_on_data",
    "describe_inputs",
    "model_label",
]
