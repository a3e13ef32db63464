"""Nothing of the user's is overwritten or left half-made: run folders carry a marker, failed starts vanish."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from netcompress.cli.main import main
from netcompress.core import Config, ConfigError
from netcompress.core.errors import CheckpointError, NetcompressError
from netcompress.core.methods import METHODS, register_method
from netcompress.recipes import run_recipe
from netcompress.recipes.run_folder import MARKER


@dataclasses.dataclass
class _RaiseConfig(Config):
    pass


if "test/raise_config_error" not in METHODS:

    @register_method("test", "raise_config_error", config=_RaiseConfig)
    def _raise(model, config, ctx):
        """A step that finds a user's mistake only when it runs (e.g. a layer name the model lacks)."""
        raise ConfigError("step 1: layer 'features.99' not found")


def _recipe(**changes) -> dict:
    recipe = {
        "name": "tiny",
        "seed": 0,
        "model": {"name": "mlp", "in_features": 16, "hidden": [8], "num_classes": 3},
        "data": {
            "name": "synthetic",
            "num_samples": 60,
            "input_shape": [16],
            "num_classes": 3,
            "batch_size": 16,
        },
        "steps": [{"op": "train", "method": "supervised", "epochs": 1, "progress": False}],
        "evaluate": {"latency": False},
        "report": {"plots": False},
    }
    recipe.update(changes)
    return recipe


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "report.md").write_text("# my notes\n")
    (folder / "metrics.json").write_text('{"mine": true}\n')
    (folder / "state.json").write_text('{"finished_steps": []}\n')  # even one that looks like a run's
    (folder / "sub" / "data.bin").write_bytes(bytes(range(256)))
    return folder


def test_resume_into_a_folder_netcompress_did_not_make_is_refused_and_changes_nothing(tmp_path, capsys):
    folder = _user_folder(tmp_path)
    before = _hashes(folder)
    with pytest.raises(ConfigError, match=f"not a netcompress run folder.*{MARKER}"):
        run_recipe(_recipe(), out_dir=folder, resume=True, progress=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(_recipe()))
    assert main(["run", str(recipe), "--resume", "--out", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a netcompress run folder" in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["run", str(recipe), "--out", str(folder), "--quiet"]) == 2  # and without --resume
    assert _hashes(folder) == before and sorted(p.name for p in folder.iterdir()) == [
        "metrics.json",
        "report.md",
        "state.json",
        "sub",
    ]


def test_a_run_folder_has_a_marker_and_resumes(tmp_path):
    out = tmp_path / "r"
    first = run_recipe(_recipe(), out_dir=out, progress=False)
    assert json.loads((out / MARKER).read_text()) == {"format": "netcompress-run", "version": 1}
    again = run_recipe(_recipe(), out_dir=out, resume=True, progress=False)
    assert again.final["accuracy"] == first.final["accuracy"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"data": {"name": "image_folder", "root": "no/such/folder"}}, NetcompressError),
        ({"model": {"name": "mlp", "checkpoint": "missing.pt"}}, CheckpointError),
        ({"steps": [{"op": "test", "method": "raise_config_error"}]}, ConfigError),
    ],
    ids=["bad data root", "bad model checkpoint", "error in step 1"],
)
def test_a_run_that_fails_before_its_first_step_leaves_nothing(change, error, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error):
        run_recipe(_recipe(**change), runs_root=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()
    empty = tmp_path / "empty"  # an empty folder the user named: its files go, the folder stays
    empty.mkdir()
    with pytest.raises(error):
        run_recipe(_recipe(**change), out_dir=empty, progress=False)
    assert empty.is_dir() and list(empty.iterdir()) == []
    result = run_recipe(_recipe(), runs_root=tmp_path / "runs", progress=False)
    assert result.run_dir == tmp_path / "runs" / "tiny"  # not tiny-2


def test_a_failed_sweep_start_leaves_nothing(tmp_path):
    recipe = _recipe(steps=[{"op": "test", "method": "raise_config_error"}], sweep={"seed": [0, 1]})
    with pytest.raises(ConfigError):
        run_recipe(recipe, runs_root=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_resume_removes_only_stale_temporary_files_of_atomic_writes(tmp_path):
    out = tmp_path / "r"
    run_recipe(_recipe(), out_dir=out, progress=False)
    stale = [
        out / ".metrics.json.k2j_9x0a.tmp",
        out / "steps" / "01-train-supervised" / ".model.pt.abcdefgh.tmp",
        out / ".model.onnx.x1y2z3w4.tmp.onnx",
    ]
    kept = [out / "notes.tmp", out / ".metrics.json.tmp", out / "steps" / ".x.toolongrandom.tmp"]
    for path in stale + kept:
        path.write_bytes(b"half")
    outside = tmp_path / ".metrics.json.abcdefgh.tmp"
    outside.write_bytes(b"not ours")
    run_recipe(_recipe(), out_dir=out, resume=True, progress=False)
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"half" for p in kept) and outside.exists()


def test_run_files_and_folders_get_normal_modes(tmp_path):
    umask = os.umask(0o022)
    try:
        out = tmp_path / "r"
        run_recipe(
            _recipe(report={"plots": True}, export={"onnx": True, "sparse": True}),
            out_dir=out,
            progress=False,
        )
        paths = [out, *out.rglob("*")]
        files = [p for p in paths if p.is_file()]
        assert (
            len(files) > 10
            and any(p.suffix == ".png" for p in files)
            and any(p.suffix == ".onnx" for p in files)
        )
        for path in paths:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o755 if path.is_dir() else 0o644), f"{path.relative_to(tmp_path)}: {oct(mode)}"
    finally:
        os.umask(umask)
