"""The command line as a new user meets it: demo, list, profile, run, report, and errors."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from netcompress.cli.main import main


def test_help_lists_every_subcommand(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "run", "profile", "report", "list"):
        assert command in out


def test_demo_quick_writes_table_report_and_plots(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "onnx int8 (ORT)" in printed and "accuracy" in printed
    metrics = json.loads((out_dir / "metrics.json").read_text())
    names = [s["name"] for s in metrics["stages"]]
    assert names[0] == "initial" and names[-1] == "onnx int8 (ORT)"
    trained = metrics["stages"][1]
    assert trained["accuracy"] > 0.8  # 3 epochs on digits
    assert metrics["stages"][-1]["size_bytes"] < 0.5 * trained["size_bytes"]
    pruned = metrics["stages"][2]
    assert pruned["name"] == "channel pruning 50% (L2) + weight reconstruction"
    assert (
        pruned["params"] < 0.3 * trained["params"] and pruned["accuracy"] > 0.9 * trained["accuracy"]
    )  # 0.74x with BN recalibration alone
    report = (out_dir / "report.md").read_text()
    assert "| train |" in report
    pngs = sorted((out_dir / "plots").glob("*.png"))
    assert len(pngs) >= 4
    for png in pngs:
        with Image.open(png) as img:
            assert img.size[0] > 100 and img.size[1] > 100
    assert "<table" in (out_dir / "report.html").read_text()
    # and the report command reads the run back
    assert main(["report", str(out_dir)]) == 0
    assert "int8 static PTQ" in capsys.readouterr().out


def test_list_shows_models_methods_and_recipes(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("cifar_vgg", "sincnet", "digits", "l1_unstructured", "soft_targets", "demo"):
        assert name in out


def test_profile_a_registry_model(capsys):
    assert main(["profile", "digits_cnn", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "macs" in out and "599,680" in out  # digits_cnn on 1x8x8, counted exactly


def test_errors_name_the_problem_and_exit_2(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump({"name": "x", "model": {"name": "mlp"}, "data": {"name": "digits"}, "stesp": []})
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "o")]) == 2
    assert "'stesp'" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["profile", "vgq"]) == 2
    assert "vgq" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "metrics.json" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["seed", "steps.9.epochs=1"])
def test_bad_overrides_are_errors(bad, capsys, tmp_path):
    assert main(["demo", "--out", str(tmp_path / "d"), bad]) == 2
    assert "override" in capsys.readouterr().err


def test_docs_and_help_agree_on_the_demo(capsys):
    from pathlib import Path

    from netcompress.cli.main import DESCRIPTION, build_parser

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    demo_help = " ".join(capsys.readouterr().out.split())
    assert "about 15 s on 2 idle CPU cores" in readme and "About 15 s on 2 idle CPU cores" in demo_help
    assert "about 15 s on 2 idle cores" in DESCRIPTION and "about 2 minutes" not in readme
    assert (
        "netcompress-demo" in DESCRIPTION
        and "runs/demo" not in DESCRIPTION
        and "netcompress-demo" in demo_help
    )
    ignored = (Path(__file__).parents[2] / ".gitignore").read_text().split()
    assert "netcompress-demo/" in ignored and ".venv-ci/" in ignored
