"""What a saved model may name: classes from ``torch.nn``, ``netcompress`` and modules the caller
allows; functions from ``torch``, ``torch.nn.functional``, ``torch.fft``, ``torch.linalg``, ``operator`` and
``math``, never a private one or one that touches files, processes or global state."""

from __future__ import annotations

import math
import operator
import types
from typing import Any

import torch
import torch.nn.functional as F

from netcompress.core.errors import CheckpointError, ConfigError

TRUSTED_CLASS_ROOTS = ("torch.nn.", "netcompress.")
FUNCTION_MODULES = {
    "torch": torch,
    "torch.nn.functional": F,
    "torch.fft": torch.fft,  # FNet's token mixing: functools.partial(torch.fft.fftn, dim=(1, 2))
    "torch.linalg": torch.linalg,
    "operator": operator,
    "math": math,
}
# torch functions a saved graph may never call: they touch files, processes or global state
FORBIDDEN_FUNCTIONS = {
    "load",
    "save",
    "from_file",
    "set_default_device",
    "set_default_dtype",
    "manual_seed",
    "compile",
}


def class_name(cls: type) -> str:
    """``module:qualname`` of a class a file can name; one that could not be found again is an error now."""
    if "<locals>" in cls.__qualname__:
        raise ConfigError(
            f"cannot save an object of class {cls.__qualname__}: a class defined inside a function"
        )
    if cls.__module__ in ("__main__", "builtins") or cls.__module__.startswith("netcompress_user_"):
        raise ConfigError(
            f"cannot save an object of class {cls.__qualname__} from {cls.__module__}: define it in an importable "
            "module (e.g. mymodel.py) so the file can name it"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def is_function(value: Any) -> bool:

    return isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.BuiltinMethodType))


def function_name(fn: Any, where: str) -> str:
    for module_name, module in FUNCTION_MODULES.items():
        for name in dir(module):
            if not name.startswith("_") and getattr(module, name, None) is fn:
                return f"{module_name}:{name}"
    raise ConfigError(
        f"cannot save {where}: {getattr(fn, '__name__', fn)!r} is not a function of torch, "
        "torch.nn.functional, torch.fft, torch.linalg, operator or math"
    )


def find_function(name: str) -> Any:
    module_name, _, attr = name.partition(":")
    module = FUNCTION_MODULES.get(module_name)
    if module is None or attr.startswith("_") or "." in attr or attr in FORBIDDEN_FUNCTIONS:
        raise CheckpointError(
            f"the file's model calls {name!r}, which netcompress does not allow in a saved model"
        )
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise CheckpointError(f"the file's model calls {name!r}, which this torch does not have")
    return fn
