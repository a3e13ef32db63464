"""The command line when a user's input is not what netcompress expects: one line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from netcompress.cli.main import main


def _digits_recipe(path, **extra):
    recipe = {
        "name": "cli_user",
        "model": {"name": "digits_cnn"},
        "data": {"name": "digits", "batch_size": 64},
        "steps": [{"op": "prune", "method": "l1_unstructured", "amount": 0.5}],
        "evaluate": {"latency": False},
        "report": {"plots": False},
        **extra,
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_overrides_after_options_are_overrides(tmp_path, capsys):
    recipe = _digits_recipe(tmp_path / "r.yaml")
    out = tmp_path / "run"
    # argparse alone rejects KEY=VALUE after an option ("unrecognized arguments: seed=3")
    assert main(["run", str(recipe), "--quiet", "--out", str(out), "seed=3", "steps.0.amount=0.25"]) == 0
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["seed"] == 3 and resolved["steps"][0]["amount"] == 0.25


def test_an_unknown_option_is_still_refused(tmp_path, capsys):
    recipe = _digits_recipe(tmp_path / "r.yaml")
    with pytest.raises(SystemExit) as info:
        main(["run", str(recipe), "--quiet", "--bogus", "seed=3"])
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith("netcompress: error: unrecognized arguments: --bogus\n")


def test_an_unforeseen_error_is_one_line_with_the_traceback_in_a_file(tmp_path, monkeypatch, capsys):
    def broken(args):
        raise TypeError("cannot assign 'dict' as child module 'meta'\nsecond line")

    monkeypatch.delenv("NETCOMPRESS_TRACEBACK", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr("netcompress.cli.list_command.run", broken)
    assert main(["list", "methods"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "netcompress list: unexpected error at test_cli_user_errors.py:46: "
        "TypeError: cannot assign 'dict' as child module 'meta'"
    )
    log = err[1].split("full traceback in ")[1].rstrip(")")
    assert log.startswith(str(tmp_path)) and "second line" in Path(log).read_text()


def test_netcompress_traceback_prints_it(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setenv("NETCOMPRESS_TRACEBACK", "1")
    monkeypatch.setattr("netcompress.cli.list_command.run", broken)
    assert main(["list", "methods"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and err.rstrip().endswith(
        "RuntimeError: boom"
    )


def test_profile_of_a_factory_without_a_shape_names_the_flags(tmp_path, monkeypatch, capsys):
    (tmp_path / "mine.py").write_text("from torch import nn\n\ndef build():\n    return nn.Linear(4, 2)\n")
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "mine.py:build", "--no-latency"]) == 2
    assert capsys.readouterr().err == (
        "netcompress profile: error: give --input-shape for the model built by mine.py:build (e.g. 1,3,32,32), "
        "or --input NAME=SHAPE[:DTYPE] per input\n"
    )


def test_invalid_yaml_is_one_line_with_its_position(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: x\nsteps: [\n")
    assert main(["run", str(recipe)]) == 2
    assert capsys.readouterr().err == (
        f"netcompress run: error: recipe {recipe} is not valid YAML: expected the node content, but found "
        "'<stream end>' (line 3, column 1)\n"
    )


def test_report_names_a_missing_folder_and_an_unfinished_run(tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / ".netcompress-run").write_text('{"format": "netcompress-run", "version": 1}')
    assert main(["report", str(tmp_path / "nothere")]) == 2
    assert (
        capsys.readouterr().err == f"netcompress report: error: run folder {tmp_path / 'nothere'} not found\n"
    )
    assert main(["report", str(unfinished)]) == 2
    assert capsys.readouterr().err == (
        f"netcompress report: error: {unfinished} is a run that has not finished (no metrics.json yet); "
        f"continue it with netcompress run RECIPE --resume --out {unfinished}\n"
    )


def test_cuda_without_a_gpu_is_refused_before_anything(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recipe = _digits_recipe(tmp_path / "r.yaml")
    # before: training started, then "AssertionError: Torch not compiled with CUDA enabled", the folder left behind
    assert main(["run", str(recipe), "--quiet", "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        "netcompress run: error: device='cuda': this torch has no CUDA device here; run with --device cpu\n"
    )
    assert not (tmp_path / "run").exists()
