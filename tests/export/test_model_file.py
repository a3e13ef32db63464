"""nc.save / nc.load: compressed models come back exactly in a fresh process, without pickle; damaged,
truncated or crafted files are errors that name the problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import CheckpointError, ConfigError

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    base = nc.models.create("digits_cnn")
    pruned = nc.prune_channels(base, X, ratio=0.5)
    masked = nc.models.create("digits_cnn")
    nc.prune_unstructured(masked, amount=0.6)
    quantized = nc.quantize(pruned, [(X, torch.zeros(4))], bits=8)
    return {"dense": base, "channel-pruned": pruned, "masked": masked, "quantized": quantized}


@pytest.mark.parametrize("kind", ["dense", "channel-pruned", "masked", "quantized"])
def test_round_trip_in_a_fresh_process_gives_identical_outputs(kind, tmp_path: Path):
    model = _models()[kind].eval()
    nc.save(model, tmp_path / "m.nc", example_inputs=X)
    torch.save(X, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(X), tmp_path / "y.pt")
    code = (
        "import torch, netcompress as nc\n"
        f"m = nc.load({str(tmp_path / 'm.nc')!r})\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r}); y = torch.load({str(tmp_path / 'y.pt')!r})\n"
        "with torch.no_grad():\n"
        "    assert torch.equal(m(x), y), (m(x) - y).abs().max()\n"
        "print(sum(p.numel() for p in m.parameters()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == sum(p.numel() for p in model.parameters())


def test_masks_keep_working_after_load(tmp_path: Path):
    masked = _models()["masked"]
    nc.save(masked, tmp_path / "m.nc")
    loaded = nc.load(tmp_path / "m.nc")
    with torch.no_grad():
        loaded.fc.weight.add_(1.0)  # a training step would do this; the mask hook must zero it again
    loaded(X)
    assert torch.equal(loaded.fc.weight == 0, masked.fc.weight == 0)


def test_damaged_truncated_and_foreign_files_are_named(tmp_path: Path):
    model = _models()["channel-pruned"]
    path = tmp_path / "m.nc"
    nc.save(model, path)
    data = path.read_bytes()
    for i, bad in enumerate([data[: len(data) // 2], data[:-1], b"", b"garbage" * 10]):
        (tmp_path / f"bad{i}.nc").write_bytes(bad)
        with pytest.raises(CheckpointError, match=f"bad{i}.nc"):
            nc.load(tmp_path / f"bad{i}.nc")
    flipped = bytearray(data)
    flipped[-5] ^= 0x40  # a weight byte
    (tmp_path / "flip.nc").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum"):
        nc.load(tmp_path / "flip.nc")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a netcompress model file"):
        nc.load(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        nc.load(tmp_path / "missing.nc")


def _rewrite(path: Path, target: Path, change) -> None:
    """Write a crafted file: decode the description, change it, re-checksum (a forger can do all that)."""
    import base64
    import zlib

    from safetensors import safe_open
    from safetensors.torch import save_file

    from netcompress.export.model_file import _checksum

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    description = json.loads(zlib.decompress(base64.b64decode(meta["model"])))
    change(description)
    text = json.dumps(description, separators=(",", ":"))
    meta["model"] = base64.b64encode(zlib.compress(text.encode())).decode()
    meta["blake2b"] = _checksum(text, tensors)
    save_file(tensors, str(target), metadata=meta)


def test_crafted_descriptions_cannot_reach_code(tmp_path: Path):
    nc.save(_models()["quantized"], tmp_path / "q.nc")

    def foreign_class(d):
        d["objects"][0]["state"]["_modules"] = {"__dict__": []}
        d["objects"].append({"class": "os:_wrap_close", "state": {}})
        d["objects"][0]["state"]["x"] = {"__ref__": len(d["objects"]) - 1}

    def forbidden_call(d):
        graph = next(o for o in d["objects"] if o and "graph" in o)["graph"]
        next(n for n in graph if n["op"] == "call_function" or n["op"] == "call_module").update(
            op="call_function", target="torch:load"
        )

    def private_method(d):
        graph = next(o for o in d["objects"] if o and "graph" in o)["graph"]
        graph[1].update(op="call_method", target="__reduce__")

    for name, change, message in [
        ("class", foreign_class, "from module 'os'"),
        ("call", forbidden_call, "torch:load"),
        ("method", private_method, "__reduce__"),
    ]:
        _rewrite(tmp_path / "q.nc", tmp_path / f"{name}.nc", change)
        with pytest.raises(CheckpointError, match=message):
            nc.load(tmp_path / f"{name}.nc")


def test_unsaveable_objects_are_refused_before_writing(tmp_path: Path):
    model = nn.Sequential(nn.Linear(2, 2))
    model.act = lambda t: t  # a lambda cannot be written as data
    with pytest.raises(ConfigError, match="model.act"):
        nc.save(model, tmp_path / "m.nc")
    assert not (tmp_path / "m.nc").exists()
