"""Unlabelled English sentences from installed source trees: docstrings and documentation files.

A sentence encoder distilled on unlabelled text generalises with more of it. Beside Python's own
documentation (:func:`netcompress.data.sentences.python_doc_sentences`) every installation holds a great deal
of technical prose: the docstrings of its packages and their ``.rst`` / ``.md`` / ``.txt`` files.
:func:`source_sentences` reads them as TEXT only (``.py`` files through :mod:`ast`; nothing is imported
or executed) and keeps the sentences that pass the same rules as ``python_doc_sentences``: 40-200
characters, starting upper-case, none of the markup characters ``* = > | [ { ` ``, no duplicates.
Sentences in ``exclude`` (held-out validation / test sentences) are dropped.

Example:
    >>> import sysconfig
    >>> found = source_sentences([sysconfig.get_paths()["purelib"] + "/numpy"], exclude=held_out)
    >>> len(found) > 1000
    True
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from netcompress.core.errors import ConfigError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MARKUP = set("*=>|[{`")
_UNDERLINE = set("-=~^*#+")
SKIP_DIRS = frozenset({"test", "tests", "testing", "__pycache__", "idlelib", "lib2to3", "turtledemo"})
SUFFIXES = (".py", ".rst", ".md", ".txt")


def split_prose(text: str, *, min_chars: int = 40, max_chars: int = 200) -> list[str]:
    """The sentences of ``text`` (whitespace collapsed) that pass the prose rules, in order.

    Example:
        >>> split_prose("Too short. This sentence is long enough to be kept as prose here. x = `1`.")
        ['This sentence is long enough to be kept as prose here.']
    """
    out = []
    for raw in _SENTENCE_END.split(" ".join(text.split())):
        s = raw.strip()
        if min_chars <= len(s) <= max_chars and s[0].isupper() and not (_MARKUP & set(s)):
            out.append(s)
    return out


def _docstrings(source: str) -> Iterator[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield from _paragraphs(doc)


def _paragraphs(text: str) -> Iterator[str]:
    """Blocks of text between blank lines, without indented (code / literal) lines or directive lines."""
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and set(stripped) <= _UNDERLINE:  # a section underline: its title line is no prose
            block = block[:-1]
            stripped = ""
        if not stripped or line[:1] in " \t" or stripped.startswith(("..", "#", ">>>", "::", "- ", "+")):
            if block:
                yield " ".join(block)
                block = []
            continue
        block.append(stripped)
    if block:
        yield " ".join(block)


def _files(root: Path, suffixes: tuple[str, ...], skip_dirs: frozenset[str]) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if (
            path.suffix in suffixes
            and path.is_file()
            and not (skip_dirs & set(path.relative_to(root).parts[:-1]))
        ):
            yield path


def source_sentences(
    roots: Iterable[str | Path],
    *,
    exclude: Iterable[str] = (),
    suffixes: Iterable[str] = SUFFIXES,
    skip_dirs: Iterable[str] = SKIP_DIRS,
    min_chars: int = 40,
    max_chars: int = 200,
    max_file_bytes: int = 2_000_000,
) -> list[str]:
    """Prose sentences of the docstrings (``.py``, via :mod:`ast`) and text files under ``roots``.

    Each root is a folder (searched recursively, folders named in ``skip_dirs`` skipped) or one file.
    Paragraphs are joined, indented blocks (code, literal examples) and directive lines dropped, then
    :func:`split_prose`. Files over ``max_file_bytes`` or not UTF-8 are skipped. Sentences in
    ``exclude`` are never returned (held-out text must not leak into training).
    """
    roots = [Path(r) for r in roots]
    missing = [str(r) for r in roots if not r.exists()]
    if missing:
        raise ConfigError(f"source_sentences: no such file or folder: {', '.join(missing)}")
    suffixes = tuple(suffixes)
    bad = [s for s in suffixes if s not in SUFFIXES]
    if bad:
        raise ConfigError(f"source_sentences reads {', '.join(SUFFIXES)} files, not {', '.join(bad)}")
    seen = set(exclude)
    out: list[str] = []
    for root in roots:
        for path in _files(root, suffixes, frozenset(skip_dirs)):
            try:
                if path.stat().st_size > max_file_bytes:
                    continue
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            blocks = _docstrings(text) if path.suffix == ".py" else _paragraphs(text)
            for block in blocks:
                for s in split_prose(block, min_chars=min_chars, max_chars=max_chars):
                    if s not in seen:
                        seen.add(s)
                        out.append(s)
    return out
