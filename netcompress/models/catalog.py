"""The model registry: names -> factories, with checked keyword options and nominal input shapes.

Each family module registers its factories here with :func:`register_model`. :func:`create`
checks the options against the factory's signature before calling it, so a typo in a recipe
(``num_clases: 10``) is an error naming the key instead of a silently ignored option.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from netcompress.core.config import check_range
from netcompress.core.errors import ConfigError
from netcompress.core.registry import Registry

# maps the factory's resolved keyword arguments to the shape of one sample (no batch dimension)
ShapeFn = Callable[[dict[str, Any]], tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: its factory and the input shape it is designed for.

    Calling a spec is the same as :func:`create` with its name, so ``MODELS.get(name)(**kw)`` works too.
    """

    name: str
    factory: Callable[..., nn.Module]
    input_shape_fn: ShapeFn

    def options(self) -> dict[str, Any]:
        """Keyword options of the factory and their defaults."""
        return {
            p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in inspect.signature(self.factory).parameters.values()
        }

    def resolve(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Options with defaults filled in; an unknown option is a ConfigError naming it."""
        known = self.options()
        for key in kwargs:
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"model {self.name!r} has no option {key!r}{hint}; options: {', '.join(known) or '(none)'}"
                )
        return {**known, **kwargs}

    def __call__(self, **kwargs: Any) -> nn.Module:
        self.resolve(kwargs)
        return self.factory(**kwargs)


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, *, input_shape: ShapeFn) -> Callable[[Callable[..., nn.Module]], Callable]:
    """Decorator: register a model factory under ``name`` with a function giving its input shape.

    Example:
        >>> @register_model("tiny", input_shape=lambda kw: (kw["in_features"],))
        ... def tiny(*, in_features: int = 4) -> nn.Module:
        ...     return nn.Linear(in_features, 2)
    """

    def _add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name, ModelSpec(name=name, factory=factory, input_shape_fn=input_shape))
        return factory

    return _add


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword options.

    Unknown names and unknown options raise :class:`ConfigError` listing what exists.

    Example:
        >>> model = create("cifar_vgg", cfg=[64, 64, "M", 128, "M"], num_classes=10)
    """
    return MODELS.get(name)(**kwargs)


def list_models() -> list[str]:
    """Sorted names of all registered models.

    Example:
        >>> "digits_cnn" in list_models()
        True
    """
    return MODELS.names()


def input_shape(name: str, **kwargs: Any) -> tuple[int, ...]:
    """Shape of one input sample (no batch dimension) the model ``name`` is designed for.

    Example:
        >>> input_shape("cifar_vgg", in_channels=1)
        (1, 32, 32)
    """
    spec = MODELS.get(name)
    return tuple(spec.input_shape_fn(spec.resolve(kwargs)))


def describe(name: str) -> dict[str, Any]:
    """JSON-able summary of a registered model: first doc line, options with defaults, input shape.

    Example:
        >>> describe("digits_cnn")["input_shape"]
        [1, 8, 8]
    """
    spec = MODELS.get(name)
    doc = inspect.getdoc(spec.factory) or ""
    return {
        "name": name,
        "description": doc.splitlines()[0] if doc else "",
        "options": {k: _jsonable(v) for k, v in spec.options().items()},
        "input_shape": list(input_shape(name)),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, int | float | str | bool | type(None)) else repr(value)


def check_int(name: str, value: Any, *, lo: int = 1) -> int:
    """Validate a whole-number option (bool is refused: ``True`` is not a channel count)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} must be an integer")
    check_range(name, value, lo=lo)
    return value


def check_width(width: Any) -> float:
    """Validate a width multiplier: a positive number."""
    if isinstance(width, bool) or not isinstance(width, int | float) or width <= 0:
        raise ConfigError(f"width={width!r} must be a positive number")
    return float(width)


def scaled(channels: int, width: float) -> int:
    """Channels after a width multiplier, at least 1 (rounded, so width=0.5 halves 64 to 32)."""
    return max(1, int(round(channels * width)))
