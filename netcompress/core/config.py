"""Config dataclasses: defaults, validation in ``__post_init__``, dict/YAML round trip.

Every method's settings are a dataclass deriving from :class:`Config`. ``from_dict`` rejects
unknown keys with a message naming the key (and where it came from), so a typo in a
recipe never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
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
        data = dict(data or {})
        known = cls.field_names()
        place = f" in {where}" if where else ""
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"unknown key {key!r}{place}{hint}; {cls.__name__} accepts: {', '.join(known)}"
                )
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


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    """Raise ConfigError unless lo <= value <= hi (either bound optional)."""
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name}={value!r} must be within [{lo}, {hi}]")
