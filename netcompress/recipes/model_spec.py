"""The recipe's ``model`` block built into a module: a registry ``name``, a user's ``factory`` (with ``kwargs``),
a state-dict ``checkpoint`` loaded into either, or a whole pickled model behind ``trust: true``; ``output`` names
the item of a tuple/dict output that is scored (:mod:`netcompress.core.output_select`).

Example:
    >>> build_model({"factory": "mymodel.py:build", "output": 1}, num_classes=10)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.core.io import load_checkpoint, load_state_dict_file
from netcompress.core.output_select import SelectOutput
from netcompress.recipes.schema import MODEL_SPEC_KEYS


def build_model(spec: dict[str, Any], *, num_classes: int) -> nn.Module:
    """Build the recipe's model: a registry ``name`` or a ``factory`` (with ``kwargs``), optionally with
    a state dict ``checkpoint`` (.pt or .safetensors); or a pickled whole model with ``trust: true``.
    ``output`` (index or key) wraps it to return that item of a tuple/dict output (default: the first / logits)."""
    model = _built_model(spec, num_classes=num_classes)
    return model if spec.get("output") is None else SelectOutput(model, spec["output"])


def _built_model(spec: dict[str, Any], *, num_classes: int) -> nn.Module:
    from netcompress import models as models_mod
    from netcompress.core.factory import call_factory

    kwargs = {**{k: v for k, v in spec.items() if k not in MODEL_SPEC_KEYS}, **(spec.get("kwargs") or {})}
    checkpoint = spec.get("checkpoint")
    if spec.get("name"):
        kwargs.setdefault("num_classes", num_classes)
        model = models_mod.create(spec["name"], **kwargs)
    elif spec.get("factory"):
        model = call_factory(spec["factory"], spec.get("kwargs") or {}, where="model.factory")
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"model.factory {spec['factory']} returned a {type(model).__name__}, not an nn.Module"
            )
    else:
        loaded = load_checkpoint(checkpoint, trust=bool(spec.get("trust", False)))
        if not isinstance(loaded, nn.Module):
            raise CheckpointError(
                f"checkpoint {checkpoint} holds a {type(loaded).__name__}, not a whole model; a state dict "
                "needs model.name or model.factory to build the model into"
            )
        return loaded
    if checkpoint:
        load_state_dict_file(model, checkpoint, trust=bool(spec.get("trust", False)))
    return model
