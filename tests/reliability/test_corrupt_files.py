"""Corrupt, truncated and tampered files: every reader answers with an error that names the file
(a NetcompressError), never another exception, never a model with silently different weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import netcompress as nc
from netcompress.core.errors import NetcompressError
from netcompress.core.io import atomic_torch_save, load_checkpoint, load_state_dict_file
from netcompress.recipes import load_recipe_file, resolve_recipe

EXAMPLES = int(os.environ.get("NETCOMPRESS_FUZZ_EXAMPLES", "25"))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _write_all(folder: Path) -> dict[str, tuple[Path, object]]:
    """One file of each kind netcompress reads, with the function that reads it back."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model = _model()
    files = {}
    torch.save(model.state_dict(), folder / "sd.pt")
    files["state dict"] = (folder / "sd.pt", lambda p: load_state_dict_file(_model(), p))
    save_file(model.state_dict(), str(folder / "w.safetensors"))
    files["safetensors"] = (folder / "w.safetensors", lambda p: load_state_dict_file(_model(), p))
    atomic_torch_save(model, folder / "signed.pt", sign=True)
    files["signed pickle"] = (folder / "signed.pt", load_checkpoint)
    pruned = _model()
    nc.prune_unstructured(pruned, amount=0.5)
    nc.save_sparse(pruned, folder / "m.ncz")
    files["sparse .ncz"] = (folder / "m.ncz", lambda p: nc.load_sparse(p, _model()))
    quant = nc.quantize(_model(), [(torch.randn(8, 16), torch.zeros(8))], bits=8)
    nc.save_quantized(quant, folder / "m.ncq")
    files["quantized .ncq"] = (folder / "m.ncq", lambda p: nc.load_quantized(p, quant))
    (folder / "r.yaml").write_text(
        "name: r\nmodel: {name: mlp}\ndata: {name: digits}\nsteps: [{op: train, epochs: 1}]\n"
    )
    files["recipe"] = (folder / "r.yaml", lambda p: resolve_recipe(load_recipe_file(p)))
    return files


BINARY_KINDS = ["state dict", "safetensors", "signed pickle", "sparse .ncz", "quantized .ncq"]
# a YAML file cut short can be a shorter valid recipe, so recipes are only cut in the fixed places below
KINDS = [*BINARY_KINDS, "recipe"]


def _expect_error_or_same(kind: str, path: Path, reader, original: bytes) -> str:
    try:
        loaded = reader(path)
    except NetcompressError as exc:
        assert path.name in str(exc) or str(path) in str(exc), f"{kind}: error does not name the file: {exc}"
        return "error"
    if path.read_bytes() == original:
        return "intact"
    # read without an error although the bytes changed: only acceptable if nothing that matters changed
    return f"accepted changed bytes ({type(loaded).__name__})"


class _Written(dict):
    def __repr__(self) -> str:  # hypothesis prints its arguments: names, not bytes
        return f"<{len(self)} written files>"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    return _Written({k: (p, r, p.read_bytes()) for k, (p, r) in _write_all(folder).items()})


@pytest.mark.parametrize("kind", KINDS)
def test_empty_missing_and_truncated_files_name_themselves(kind, written, tmp_path):
    path, reader, original = written[kind]
    target = tmp_path / path.name
    for data in (b"", original[: len(original) // 2], original[:10], b"\x00" * 64):
        target.write_bytes(data)
        with pytest.raises(NetcompressError, match=target.name):
            reader(target)
    with pytest.raises(NetcompressError, match="missing"):
        reader(tmp_path / f"missing{path.suffix}")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(BINARY_KINDS), cut=st.floats(0.0, 0.999))
def test_truncated_anywhere_is_an_error(kind, cut, written, tmp_path):
    path, reader, original = written[kind]
    target = tmp_path / path.name
    target.write_bytes(original[: int(len(original) * cut)])
    with pytest.raises(NetcompressError):
        reader(target)


# netcompress's own formats carry a checksum or signature: any flipped byte is an error, never other weights
OWN_FORMATS = ["signed pickle", "sparse .ncz", "quantized .ncq"]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(OWN_FORMATS), where=st.floats(0.0, 0.999), flip=st.integers(1, 255))
def test_a_flipped_byte_in_our_formats_is_an_error(kind, where, flip, written, tmp_path):
    path, reader, original = written[kind]
    data = bytearray(original)
    data[int(len(data) * where)] ^= flip
    target = tmp_path / path.name
    target.write_bytes(bytes(data))
    sig = path.with_name(path.name + ".sig")
    if sig.exists():
        target.with_name(sig.name).write_bytes(sig.read_bytes())
    with pytest.raises(NetcompressError):
        reader(target)
