"""Nothing a user hands in runs code unless they opted in: crafted pickles in every loading path."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from netcompress.core import CheckpointError, ConfigError, DataError, UntrustedCheckpointError
from netcompress.core.io import atomic_torch_save, atomic_write_text, load_checkpoint, load_state_dict_file
from netcompress.recipes.runner import build_model


class _Payload:
    """Unpickling this creates ``path``: stands in for any code an attacker ships in a checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _evil(tmp_path: Path, name: str = "evil.pt") -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / name
    torch.save({"model": _Payload(marker)}, path)
    return path, marker


def test_crafted_checkpoint_runs_nothing_by_default_and_names_the_safe_ways(tmp_path: Path):
    path, marker = _evil(tmp_path)
    with pytest.raises(UntrustedCheckpointError) as err:
        load_checkpoint(path)
    assert not marker.exists()
    for hint in ("state dict", "safetensors", "--trust-checkpoint", "trust: true"):
        assert hint in str(err.value)
    with pytest.warns(UserWarning, match="runs any code"):
        load_checkpoint(path, trust=True)
    assert marker.exists()  # the opt-in really unpickles


def test_recipe_model_checkpoint_is_safe_unless_trusted(tmp_path: Path):
    path, marker = _evil(tmp_path)
    with pytest.raises(UntrustedCheckpointError):
        build_model({"checkpoint": str(path)}, num_classes=3)
    with pytest.raises(UntrustedCheckpointError):  # also when a state dict is expected
        build_model({"name": "mlp", "in_features": 4, "checkpoint": str(path)}, num_classes=3)
    assert not marker.exists()
    model = nn.Sequential(nn.Linear(4, 3))
    torch.save(model, tmp_path / "whole.pt")
    with pytest.warns(UserWarning):
        loaded = build_model({"checkpoint": str(tmp_path / "whole.pt"), "trust": True}, num_classes=3)
    assert torch.equal(loaded[0].weight, model[0].weight)


def test_cli_profile_refuses_crafted_pickle(tmp_path: Path):
    path, marker = _evil(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "netcompress.cli.main", "profile", str(path), "--no-latency"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "--trust-checkpoint" in proc.stderr
    assert not marker.exists()


def test_signed_files_load_and_tampered_ones_do_not(tmp_path: Path):
    model = nn.Sequential(nn.Linear(4, 3))
    path = atomic_torch_save(model, tmp_path / "model.pt", sign=True)
    assert isinstance(load_checkpoint(path), nn.Sequential)
    # same bytes, foreign signature file: refused
    atomic_write_text(path.with_name("model.pt.sig"), "0" * 64)
    with pytest.raises(UntrustedCheckpointError):
        load_checkpoint(path)
    # signed here, then replaced by a crafted file: refused, nothing runs
    atomic_torch_save(model, path, sign=True)
    evil, marker = _evil(tmp_path, "other.pt")
    path.write_bytes(evil.read_bytes())
    with pytest.raises(UntrustedCheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_state_dicts_and_safetensors_load_without_opt_in(tmp_path: Path):
    from safetensors.torch import save_file

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "sd.pt")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("sd.pt", "w.safetensors"):
        fresh = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        load_state_dict_file(fresh, tmp_path / name)
        assert all(
            torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values())
        )
    with pytest.raises(CheckpointError, match="does not fit"):
        load_state_dict_file(nn.Linear(5, 5), tmp_path / "w.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_crafted_cifar_batch_runs_nothing(tmp_path: Path):
    from netcompress.data.cifar10 import arrays_from_pickles

    marker = tmp_path / "pwned"
    good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
    blobs = {name: good for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    blobs["batches.meta"] = pickle.dumps({b"label_names": [b"a", b"b"]})
    arrays, classes = arrays_from_pickles(blobs, source="mem")
    assert arrays["train_x"].shape == (10, 3, 32, 32) and classes == ["a", "b"]
    blobs["test_batch"] = pickle.dumps({b"data": _Payload(marker)})
    with pytest.raises(DataError, match="refusing to load"):
        arrays_from_pickles(blobs, source="mem")
    assert not marker.exists()


def test_factory_model_from_a_fresh_folder_without_pythonpath(tmp_path: Path):
    (tmp_path / "mymodel.py").write_text(
        "from torch import nn\n\ndef build(width=8):\n    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))\n"
    )
    script = (
        "import torch\n"
        "from netcompress.recipes.runner import build_model\n"
        "m = build_model({'factory': 'mymodel.py:build', 'kwargs': {'width': 6}}, num_classes=10)\n"
        "torch.save(m.state_dict(), 'state.pt')\n"
        "n = build_model({'factory': 'mymodel:build', 'kwargs': {'width': 6}, 'checkpoint': 'state.pt'}, num_classes=10)\n"
        "assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), n.state_dict().values()))\n"
        "print(n[0].out_features)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "6"


def test_factory_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(ConfigError, match="must look like"):
        build_model({"factory": "nocolon"}, num_classes=2)
    with pytest.raises(ConfigError, match="not found"):
        build_model({"factory": str(tmp_path / "missing.py") + ":build"}, num_classes=2)
    (tmp_path / "m.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no callable named 'build'"):
        build_model({"factory": str(tmp_path / "m.py") + ":build"}, num_classes=2)


def test_written_files_get_normal_modes(tmp_path: Path):
    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_cli_profile_takes_a_factory_and_a_state_dict_from_the_current_folder(tmp_path: Path):
    (tmp_path / "mymodel.py").write_text(
        "from torch import nn\n\ndef build(width=8):\n    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))\n"
    )
    torch.save(
        nn.Sequential(nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 10)).state_dict(), tmp_path / "state.pt"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base = [
        sys.executable,
        "-m",
        "netcompress.cli.main",
        "profile",
        "mymodel.py:build",
        "width=6",
        "--no-latency",
    ]
    proc = subprocess.run(
        [*base, "--checkpoint", "state.pt", "--input-shape", "1,64"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "│ params " in proc.stdout and " 460 │" in proc.stdout  # 64*6+6 + 6*10+10: the state dict's widths
    no_shape = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert (
        no_shape.returncode == 2 and "--input-shape" in no_shape.stderr and "Traceback" not in no_shape.stderr
    )


def test_a_file_that_is_not_a_checkpoint_is_called_corrupt_not_untrusted(tmp_path: Path):
    (tmp_path / "notes.pt").write_text("# not a checkpoint\n" * 20)
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as err:
        load_checkpoint(tmp_path / "notes.pt")
    assert not isinstance(err.value, UntrustedCheckpointError)
