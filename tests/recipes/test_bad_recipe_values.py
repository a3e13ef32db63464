"""Bad values outside the steps (data loaders, evaluate/export/report, top level, empty steps, 0 epochs):
each is a one-line ConfigError naming its key (and step), raised before any work."""

from __future__ import annotations

import pytest

from netcompress.core.errors import ConfigError
from netcompress.recipes import resolve_recipe, run_recipe

TRAIN = {"op": "train", "method": "supervised", "epochs": 1}
BASE = {"model": {"name": "digits_cnn"}, "data": {"name": "digits"}, "steps": [TRAIN]}


def _with(path: str, value):
    """BASE with ``value`` at dotted ``path`` (``steps.0.epochs``); the value ``...`` deletes the key."""
    recipe = {
        k: (dict(v) if isinstance(v, dict) else [dict(s) for s in v] if isinstance(v, list) else v)
        for k, v in BASE.items()
    }
    *parents, last = path.split(".")
    node = recipe
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is ...:
        node.pop(last, None)
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return recipe


BAD = [
    ("data.batch_size", 0, "batch_size"),
    ("data.batch_size", "x", "batch_size"),
    ("data.batch_size", 2.5, "batch_size"),
    ("data.batch_size", True, "batch_size"),
    ("data.eval_batch_size", 0, "eval_batch_size"),
    ("data.eval_batch_size", "big", "eval_batch_size"),
    ("data.num_workers", -1, "num_workers"),
    ("data.num_workers", 1.5, "num_workers"),
    ("data.calib_batches", 0, "calib_batches"),
    ("steps", [], "at least one step"),
    ("steps", ..., "at least one step"),
    ("steps", None, "at least one step"),
    ("steps", {"op": "train"}, "'steps' must be a list"),
    ("steps.0", {"op": "train", "method": "supervised", "epochs": 0}, "epochs=0 in step 1"),
    ("steps.0", {"op": "train", "method": "finetune", "epochs": 0}, "epochs=0 in step 1"),
    ("steps.0", {"op": "distill", "method": "soft_targets", "epochs": 0}, "epochs=0 in step 1"),
    ("steps.0", {"op": "quantize", "method": "qat", "epochs": 0}, "epochs=0 in step 1"),
    ("evaluate.latency", "yes", "latency"),
    ("evaluate.repeats", 0, "repeats"),
    ("evaluate.repeats", "many", "repeats"),
    ("evaluate.batch_sizes", [1, 0], "batch_sizes"),
    ("evaluate.batch_sizes", 64, "batch_sizes"),
    ("evaluate.max_batches", 0, "max_batches"),
    ("export.onnx", "true", "onnx"),
    ("export.int8", 1, "int8"),
    ("export.sparse", "no", "sparse"),
    ("report.plots", "off", "plots"),
    ("report.title", 3, "title"),
    ("seed", "x", "seed"),
    ("seed", 1.5, "seed"),
    ("seed", True, "seed"),
    ("name", ["a"], "name"),
    ("description", 5, "description"),
]


@pytest.mark.parametrize(("path", "value", "named"), BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_bad_recipe_values_are_one_line_errors_naming_the_key(path, value, named, tmp_path, monkeypatch):
    recipe = _with(path, value)
    with pytest.raises(ConfigError) as err:
        resolve_recipe(recipe)
    message = str(err.value)
    assert named in message and "\n" not in message
    if path.startswith("steps.0"):
        assert "step 1" in message
    # run_recipe checks the same before any work: no data loaded, no folder made
    import netcompress.data as data_mod

    monkeypatch.setattr(data_mod, "load", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(ConfigError):
        run_recipe(recipe, runs_root=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_zero_epochs_stay_allowed_where_they_mean_something():
    # a dynamic step with 0 epochs builds its heads without training them
    step = {"op": "dynamic", "method": "early_exit", "exits": ["features.2"], "epochs": 0}
    assert resolve_recipe(_with("steps.0", step))["steps"][0]["epochs"] == 0
    loaders = resolve_recipe(_with("data.num_workers", 0))["data"]
    assert (loaders["batch_size"], loaders["eval_batch_size"], loaders["calib_batches"]) == (128, 256, 16)
