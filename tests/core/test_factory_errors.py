"""A user's factory file that fails to import or to build: one line naming the spec, the error and the line."""

from __future__ import annotations

import pytest

from netcompress.core.errors import ConfigError
from netcompress.core.factory import call_factory

SOURCES = {
    "syntax": "def build(:\n    pass\n",
    "missing_import": "import not_installed_anywhere_xyz\n\ndef build():\n    pass\n",
    "raises": "def build(n=1):\n    raise ValueError('weights folder missing')\n",
    "inner_type_error": "def build(n=1):\n    return len(n)\n",
    "own_error": (
        "from netcompress.core.errors import DataError\n\ndef build():\n    raise DataError('named by netcompress')\n"
    ),
}


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("syntax", {}, "importing {path} failed: SyntaxError: invalid syntax (at {file}:1)"),
        (
            "missing_import",
            {},
            "importing {path} failed: ModuleNotFoundError: No module named 'not_installed_anywhere_xyz' (at {file}:1)",
        ),
        ("raises", {}, "{path}:build raised ValueError: weights folder missing (at {file}:2)"),
        # a TypeError inside the function is not blamed on the arguments, which fit
        (
            "inner_type_error",
            {"n": 3},
            "{path}:build raised TypeError: object of type 'int' has no len() (at {file}:2)",
        ),
        (
            "raises",
            {"m": 3},
            "{path}:build rejected its keyword arguments ['m']: got an unexpected keyword argument 'm'",
        ),
    ],
)
def test_factory_failures_are_one_line(tmp_path, name, kwargs, message):
    path = tmp_path / f"factory_{name}_{len(kwargs)}.py"
    path.write_text(SOURCES[name])
    with pytest.raises(ConfigError) as info:
        call_factory(f"{path}:build", kwargs, where="model.factory")
    assert str(info.value) == "model.factory: " + message.format(path=path, file=path.name)


def test_a_netcompress_error_from_the_factory_passes_unchanged(tmp_path):
    path = tmp_path / "factory_own_error.py"
    path.write_text(SOURCES["own_error"])
    with pytest.raises(Exception, match="^named by netcompress$"):
        call_factory(f"{path}:build", where="model.factory")
