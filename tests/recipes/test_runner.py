"""Recipe runs: unknown keys named, overrides, resume after a kill gives the same final metrics."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from netcompress.core import Config, ConfigError
from netcompress.core.methods import METHODS, Result, register_method
from netcompress.recipes import apply_overrides, resolve_recipe, run_recipe


@dataclasses.dataclass
class _FailConfig(Config):
    flag: str = ""


class _Killed(Exception):
    pass


if "test/fail_if_flag" not in METHODS:

    @register_method("test", "fail_if_flag", config=_FailConfig)
    def _fail_step(model, config, ctx):
        """Raises while the flag file exists: stands in for a run killed during a step."""
        from pathlib import Path

        if config.flag and Path(config.flag).exists():
            raise _Killed("simulated kill")
        return Result(model=model, summary={"passed": True})


def _recipe(flag: str = "") -> dict:
    return {
        "name": "tiny",
        "seed": 3,
        "model": {"name": "mlp", "in_features": 48, "hidden": [16], "num_classes": 4},
        "data": {
            "name": "synthetic",
            "num_samples": 96,
            "input_shape": [48],
            "num_classes": 4,
            "batch_size": 32,
        },
        "steps": [
            {"op": "train", "method": "supervised", "epochs": 2, "lr": 0.05, "progress": False},
            {"op": "test", "method": "fail_if_flag", "flag": flag},
            {"op": "train", "method": "supervised", "epochs": 1, "lr": 0.01, "progress": False},
        ],
        "evaluate": {"latency": False},
        "report": {"plots": False},
    }


def test_unknown_keys_are_named_with_their_step():
    recipe = _recipe()
    recipe["steps"][0]["epohcs"] = 3
    with pytest.raises(ConfigError, match=r"'epohcs'.*step 1 \(train/supervised\)"):
        resolve_recipe(recipe)
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        resolve_recipe({**_recipe(), "modle": {}})
    with pytest.raises(ConfigError, match="unknown op 'prnue'"):
        resolve_recipe({**_recipe(), "steps": [{"op": "prnue", "method": "x"}]})


def test_overrides_set_nested_values_and_reject_bad_paths():
    recipe = apply_overrides(_recipe(), ["seed=7", "steps.0.epochs=5", "data.batch_size=16"])
    assert recipe["seed"] == 7 and recipe["steps"][0]["epochs"] == 5 and recipe["data"]["batch_size"] == 16
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(_recipe(), ["steps.9.epochs=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(_recipe(), ["seed"])


def test_resolved_recipe_lists_every_default():
    resolved = resolve_recipe(_recipe())
    assert resolved["steps"][0]["momentum"] == 0.9  # a TrainConfig default, filled in
    assert resolved["data"]["eval_batch_size"] == 256


def test_killed_run_resumes_at_step_2_with_same_final_metrics(tmp_path):
    flag = tmp_path / "kill-now"
    full = run_recipe(_recipe(str(flag)), out_dir=tmp_path / "full", progress=False)

    flag.touch()
    with pytest.raises(_Killed):
        run_recipe(_recipe(str(flag)), out_dir=tmp_path / "killed", progress=False)
    state = json.loads((tmp_path / "killed" / "state.json").read_text())
    assert [s["index"] for s in state["finished_steps"]] == [0]
    flag.unlink()
    resumed = run_recipe(_recipe(str(flag)), out_dir=tmp_path / "killed", resume=True, progress=False)

    keys = ("accuracy", "loss", "params", "nonzero_params", "macs")
    assert [{k: s[k] for k in keys} for s in resumed.stages] == [{k: s[k] for k in keys} for s in full.stages]
    assert len(resumed.stages) == 4  # initial + three steps
    for sub in (
        "recipe.yaml",
        "metrics.json",
        "steps/01-train-supervised/model.pt",
        "steps/03-train-supervised/history.json",
    ):
        assert (tmp_path / "killed" / sub).exists(), sub
    assert yaml.safe_load((tmp_path / "killed" / "recipe.yaml").read_text())["seed"] == 3


def test_existing_run_folder_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("user data")
    with pytest.raises(ConfigError, match="not a netcompress run folder"):
        run_recipe(_recipe(), out_dir=out, progress=False)
    assert (out / "precious.txt").read_text() == "user data"
    run_recipe(_recipe(), out_dir=tmp_path / "made", progress=False)
    with pytest.raises(ConfigError, match="already exists.*--resume"):  # a run folder: resume or another
        run_recipe(_recipe(), out_dir=tmp_path / "made", progress=False)


def test_resume_refuses_a_changed_recipe(tmp_path):
    run_recipe(_recipe(), out_dir=tmp_path / "r", progress=False)
    changed = apply_overrides(_recipe(), ["seed=4"])
    with pytest.raises(ConfigError, match="differs"):
        run_recipe(changed, out_dir=tmp_path / "r", resume=True, progress=False)


def test_profiles_apply_named_overrides():
    from netcompress.recipes.schema import apply_profile

    recipe = {**_recipe(), "profiles": {"full": ["data.num_samples=512", "steps.0.epochs=9"]}}
    full = apply_profile(recipe, "full")
    assert full["data"]["num_samples"] == 512 and full["steps"][0]["epochs"] == 9
    assert apply_profile(recipe, None)["steps"][0]["epochs"] == 2
    with pytest.raises(ConfigError, match="unknown profile 'ful'.*full"):
        apply_profile(recipe, "ful")


def _all_steps() -> list[str]:
    from netcompress.core.methods import _ensure_registered as import_step_modules

    import_step_modules()
    return [n for n in METHODS.names() if not n.startswith("test/")]


@pytest.mark.parametrize("key", _all_steps())
def test_every_registered_step_resolves_with_its_defaults(key):
    op, method = key.split("/")
    required = {"dynamic/early_exit": {"exits": ["net.1"]}}.get(key, {})  # the fields with no default
    resolved = resolve_recipe({**_recipe(), "steps": [{"op": op, "method": method, **required}]})
    assert (resolved["steps"][0]["op"], resolved["steps"][0]["method"]) == (op, method)


def test_a_step_config_may_not_shadow_the_step_keys():
    @dataclasses.dataclass
    class _Shadow(Config):
        method: str = "x"

    with pytest.raises(ValueError, match="method"):
        register_method("test", "shadow", config=_Shadow)


_SEEN: dict = {}


@dataclasses.dataclass
class _RecordConfig(Config):
    pass


if "test/record_data" not in METHODS:

    @register_method("test", "record_data", config=_RecordConfig)
    def _record_data(model, config, data):
        """Keeps what the runner handed the step, for the test below."""
        _SEEN.update(train=data.train_loader, val=data.val_loader)
        return Result(model=model, summary={})


def test_a_step_chooses_on_the_validation_split_and_stages_are_measured_on_test(tmp_path):
    import netcompress.data as ncd

    recipe = {**_recipe(), "steps": [{"op": "test", "method": "record_data"}]}
    result = run_recipe(recipe, out_dir=tmp_path / "r", progress=False)
    data = {k: v for k, v in recipe["data"].items() if k not in ("name", "batch_size")}
    bundle = ncd.load("synthetic", **data)
    val = torch.cat([x for x, _ in _SEEN["val"]])
    # the validation split (10 of the 96 training samples), not the test split (24 samples)
    assert val.shape[0] == len(bundle.val) == 10
    assert {tuple(r.tolist()) for r in val} == {tuple(r.tolist()) for r in bundle.val.inputs}
    train = torch.cat([x for x, _ in _SEEN["train"]])
    assert train.shape[0] == 86 and not {tuple(r.tolist()) for r in val} & {tuple(r.tolist()) for r in train}
    assert [s["split"] for s in result.stages] == ["test", "test"]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["splits"] == {
        "sizes": {"train": 86, "val": 10, "test": 24},
        "stages": "test",
        "choices": "val",
    }


def test_without_a_validation_split_steps_get_none(tmp_path):
    recipe = {**_recipe(), "steps": [{"op": "test", "method": "record_data"}]}
    recipe["data"] = {**recipe["data"], "val_fraction": 0}
    run_recipe(recipe, out_dir=tmp_path / "r", progress=False)
    assert _SEEN["val"] is None
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["splits"]["choices"] is None and metrics["splits"]["sizes"]["val"] == 0


def test_evaluate_batch_sizes_are_the_latencies_measured(tmp_path):
    recipe = {
        **_recipe(),
        "steps": [{"op": "test", "method": "record_data"}],
        "evaluate": {"latency": True, "batch_sizes": [1, 8], "repeats": 2},
    }
    stage = run_recipe(recipe, out_dir=tmp_path / "r", progress=False).final
    assert stage["latency_ms"] is not None and stage["latency_b8_ms"] is not None
    assert stage["latency_b64_ms"] is None  # not asked for
    with pytest.raises(ConfigError, match="batch_sizes"):
        resolve_recipe({**_recipe(), "evaluate": {"batch_sizes": [0]}})
    with pytest.raises(ConfigError, match="every_step"):
        resolve_recipe({**_recipe(), "evaluate": {"every_step": True}})
