"""source_sentences: unlabelled prose from installed source trees (docstrings via ast, .rst/.md/.txt text),
held-out sentences never returned, nothing imported."""

from __future__ import annotations

import textwrap

import pytest

from netcompress.core.errors import ConfigError
from netcompress.data.text_corpus import source_sentences, split_prose

KEPT = "This sentence is long enough to be kept as prose in the corpus."


def _tree(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(
        textwrap.dedent(
            '''
            """Module docstrings are read with ast and nothing is ever imported here.

            Parameters
            ----------
            x : int
                An indented parameter description that is long enough but is not kept.

            Examples
            --------
            >>> print("A doctest line that is long enough to be a sentence here.")

                An indented literal block that is long enough to be a sentence too.
            """
            raise SystemExit("never imported")


            def f():
                """Function docstrings count as well when they are long enough. Short."""
            '''
        )
    )
    (tmp_path / "pkg" / "README.md").write_text(
        "# Title line\n\n" + KEPT + "\nIt goes on across a line break and still counts.\n\n"
        "    indented_code(block, that_is, long_enough=True) and more words here.\n\n"
        "This has `markup` in it, so it is dropped although it is long.\n"
    )
    (tmp_path / "pkg" / "guide.rst").write_text(
        "Section title that is long enough to look like a sentence.\n"
        "==========================================================\n\n"
        ".. note:: A directive line that is long enough to be a sentence here.\n\n"
        + KEPT + "\n"  # a duplicate: returned once
    )
    (tmp_path / "pkg" / "tests").mkdir()
    (tmp_path / "pkg" / "tests" / "test_x.py").write_text(
        '"""A sentence in a test folder that is long enough to count."""\n'
    )
    (tmp_path / "pkg" / "data.json").write_text('"A JSON string that is long enough to be a sentence."')
    return tmp_path / "pkg"


def test_source_sentences_reads_docstrings_and_text_files_as_prose(tmp_path):
    found = source_sentences([_tree(tmp_path)])
    # exactly these four, in file order: README.md, guide.rst (only a duplicate left), mod.py
    assert found == [
        KEPT,
        "It goes on across a line break and still counts.",
        "Module docstrings are read with ast and nothing is ever imported here.",
        "Function docstrings count as well when they are long enough.",
    ]


def test_held_out_sentences_are_never_returned(tmp_path):
    root = _tree(tmp_path)
    found = source_sentences([root], exclude=[KEPT])
    assert KEPT not in found and len(found) == 3
    only_py = source_sentences([root / "mod.py"], suffixes=[".py"])
    assert only_py == [
        "Module docstrings are read with ast and nothing is ever imported here.",
        "Function docstrings count as well when they are long enough.",
    ]


def test_split_prose_applies_the_documentation_rules():
    text = "Too short. " + KEPT + " lower case start that is long enough to be a sentence. x = `1` is markup here ok."
    assert split_prose(text) == [KEPT]
    assert split_prose("A" * 201 + ".") == []


def test_bad_roots_and_suffixes_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no such file or folder"):
        source_sentences([tmp_path / "missing"])
    with pytest.raises(ConfigError, match=r"not \.json"):
        source_sentences([tmp_path], suffixes=[".json"])
