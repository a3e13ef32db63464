"""Choosing layers by name: exact names or ``re:`` regular expressions, plus module types.

:func:`name_matches` is the one name rule of the package (pruning, quantization and the
steps use it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn

from netcompress.core.errors import ConfigError


def name_matches(name: str, pattern: str) -> bool:
    """The one layer-name rule: ``pattern`` is an exact qualified name or ``re:<regex>`` (full match).

    Example:
        >>> name_matches("features.3", "re:features\\.\\d+"), name_matches("features.3", "features")
        (True, False)
    """
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern


def select_modules(
    model: nn.Module,
    *,
    types: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear),
    include: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
) -> dict[str, nn.Module]:
    """Return ``{qualified_name: module}`` for modules of ``types`` chosen by name.

    ``include`` (None = all) and ``exclude`` hold exact names or ``re:<regex>`` patterns,
    matched against the full qualified name. A pattern in ``include`` that matches no layer
    is an error naming it, so a typo never silently selects nothing.

    Example:
        >>> select_modules(model, include=["re:features\\..*"], exclude=["features.0"])
    """
    exclude = list(exclude)
    candidates = {n: m for n, m in model.named_modules() if n and isinstance(m, types)}
    if include is not None:
        for pattern in include:
            if not any(name_matches(n, pattern) for n in candidates):
                raise ConfigError(
                    f"layer pattern {pattern!r} matches no {'/'.join(t.__name__ for t in types)} layer; "
                    f"layers: {', '.join(candidates) or '(none)'}"
                )
        candidates = {n: m for n, m in candidates.items() if any(name_matches(n, p) for p in include)}
    return {n: m for n, m in candidates.items() if not any(name_matches(n, p) for p in exclude)}


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"model has no submodule {name!r}") from None


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` with ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = get_submodule(model, parent_name) if parent_name else model
    setattr(parent, child, new)
