"""Config dataclasses: defaults, validation in ``__post_init__``, dict/YAML round trip.

Every method's settings are a dataclass deriving from :class:`Config`. ``from_dict`` rejects
unknown keys with a message naming the key (and where it came from), so a typo in a
recipe never silently falls back to a default.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import types
import typing
from typing import Any, TypeVar

from netcompress.core.errors import ConfigError

C = TypeVar("C", bound="Config")


@dataclasses.dataclass
class Config:
    """Base of all config dataclasses."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None, *, where: str = "") -> C:
        """Build from a mapping; unknown keys raise :class:`ConfigError` naming the key."""
        place = f" in {where}" if where else ""
        if data is not None and not isinstance(data, collections.abc.Mapping):
            raise ConfigError(
                f"{where or cls.__name__} must be a mapping of keys to values, got {type(data).__name__}"
            )
        data = dict(data or {})
        known = cls.field_names()
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"unknown key {key!r}{place}{hint}; {cls.__name__} accepts: {', '.join(known)}"
                )
        hints = _field_types(cls)
        for key, value in data.items():
            problem = type_problem(value, hints.get(key, Any))
            if problem:
                raise ConfigError(f"{key}={value!r}{place}: {problem}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise ConfigError(f"{exc}{place}") from None
            raise ConfigError(f"invalid {cls.__name__}{place}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {choices}")


def check_fraction(name: str, value: float) -> None:
    """A share to remove: ``0 <= value < 1``; 1 would remove everything and leave a model at chance."""
    check_range(name, value, 0.0, None)
    if value >= 1.0:
        raise ConfigError(
            f"{name}={value!r} would remove everything (the model could only guess); use a value below 1"
        )


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    """Raise ConfigError unless lo <= value <= hi (either bound optional); NaN is never in range."""
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{name}={value!r} is not a number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name}={value!r} must be within [{lo}, {hi}]")


def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved is not checked
        return {}


def type_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` does not fit ``annotation`` (None when it does), for the types configs use.

    ``bool`` is not an ``int`` here (``epochs: true`` is a mistake), an ``int`` is a ``float``, and
    ``None`` fits only an optional field.
    """
    if annotation is Any or isinstance(annotation, typing.TypeVar):
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [type_problem(value, a) for a in args if a is not type(None)]
        return None if any(p is None for p in problems) else f"expected {type_label(annotation)}"
    if origin is typing.Literal:
        return None if value in args else f"expected one of {list(args)}"
    if value is None:
        return f"expected {type_label(annotation)}, got null"
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            return "expected a finite number"
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is str:
        ok = isinstance(value, str)
    elif origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"expected a list, got {type(value).__name__}"
        item = (
            args[0]
            if args and origin is not tuple
            else (args[0] if len(args) == 2 and args[1] is Ellipsis else Any)
        )
        for element in value:
            if type_problem(element, item) is not None:
                return f"expected {type_label(annotation)}, got an element {element!r}"
        return None
    elif origin in (dict, collections.abc.Mapping) or annotation is dict:
        ok = isinstance(value, dict)
    elif isinstance(annotation, type):
        ok = isinstance(value, annotation)
    else:
        return None
    return None if ok else f"expected {type_label(annotation)}, got {type(value).__name__}"


def type_label(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def describe_fields(cls: type) -> list[dict[str, Any]]:
    """Each field of a config class: name, type and default (``netcompress list methods``)."""
    hints = _field_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        rows.append({"name": f.name, "type": type_label(hints.get(f.name, Any)), "default": default})
    return rows
