"""Factory specs: a user's own model or data set named as ``package.module:function`` or
``path/to/file.py:function``, imported from the current folder without ``PYTHONPATH``.

Example:
    >>> build = import_factory("mymodel.py:build")
    >>> model = build(num_classes=10)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netcompress.core.errors import ConfigError, NetcompressError


def import_factory(spec: str, *, where: str = "factory") -> Callable[..., Any]:
    """The callable named by ``spec``; an error names the spec and what is missing."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(
            f"{where}: {spec!r} must look like 'package.module:function' or 'path/to/file.py:function'"
        )
    target, name = spec.split(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _module_from_file(Path(target), where=where)
    else:
        cwd = str(Path.cwd())
        if cwd not in sys.path:
            sys.path.insert(0, cwd)  # the user's own modules live where they run netcompress
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"{where}: cannot import module {target!r} ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - a syntax error or a failing import inside the module
            raise ConfigError(f"{where}: importing {target} failed: {_described(exc)}") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{where}: {target!r} has no callable named {name!r}")
    return fn


def call_factory(spec: str, kwargs: dict[str, Any] | None = None, *, where: str = "factory") -> Any:
    """``fn(**kwargs)`` for the function ``spec`` names; arguments it does not take, or an exception
    raised inside it, are a ConfigError naming the spec (and the user's file and line)."""
    fn = import_factory(spec, where=where)
    try:
        inspect.signature(fn).bind(**(kwargs or {}))
    except TypeError as exc:
        raise ConfigError(
            f"{where}: {spec} rejected its keyword arguments {sorted(kwargs or {})}: {exc}"
        ) from None
    except ValueError:  # no signature to check (a builtin): the call itself tells
        pass
    try:
        return fn(**(kwargs or {}))
    except NetcompressError:  # already names what is wrong (e.g. a shipped factory's own check)
        raise
    except Exception as exc:  # noqa: BLE001 - the user's own code failed: name it and where
        raise ConfigError(f"{where}: {spec} raised {_described(exc)}") from exc


def _described(exc: BaseException) -> str:
    """``ValueError: message (at mymodel.py:12)``: the exception in one line and its innermost frame."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, SyntaxError) and exc.msg:
        text = exc.msg  # str() repeats the file and line given below
    frames = traceback.extract_tb(exc.__traceback__)
    filename, line = (frames[-1].filename, frames[-1].lineno) if frames else (None, None)
    if isinstance(exc, SyntaxError) and exc.filename:
        filename, line = exc.filename, exc.lineno
    at = f" (at {Path(filename).name}:{line})" if filename and not filename.startswith("<") else ""
    return f"{type(exc).__name__}: {text}{at}"


def _module_from_file(path: Path, *, where: str) -> Any:
    path = path.expanduser()
    if not path.is_file():
        raise ConfigError(f"{where}: file {path} not found (relative paths start at {Path.cwd()})")
    # the file's own name (mymodel.py -> mymodel), so saved models can name its classes; a clash with a
    # different module of that name falls back to a private name
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", "") or "").resolve() == path.resolve():
            return existing
        name = f"netcompress_user_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{where}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent = str(path.resolve().parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - a syntax error, a missing import, ... in the user's file
        del sys.modules[name]
        raise ConfigError(f"{where}: importing {path} failed: {_described(exc)}") from exc
    return module
