"""State dict files that do not fit a user's model: one line naming the tensors; wrapper prefixes are stripped."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from netcompress.core.errors import CheckpointError
from netcompress.core.io import load_state_dict_file, state_dict_mismatch


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 3))


def _saved(tmp_path, change) -> str:
    state = {k: v.clone() for k, v in _model().state_dict().items()}
    change(state)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    return str(path)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda s: s.update({"3.weight": torch.zeros(3, 8)}),
            "1 tensor of the wrong shape: 3.weight (file (3, 8), model (3, 4))",
        ),
        (lambda s: s.pop("3.bias"), "1 missing key: 3.bias"),
        (lambda s: s.update({"4.weight": torch.zeros(2)}), "1 unexpected key: 4.weight"),
        (
            lambda s: [s.pop(k) for k in ("0.weight", "0.bias", "1.weight", "1.bias")],
            "4 missing keys: 0.weight, 0.bias, 1.weight, ... (1 more)",
        ),
    ],
)
def test_a_state_dict_that_does_not_fit_is_one_line(tmp_path, change, expected):
    path = _saved(tmp_path, change)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(_model(), path)
    assert str(info.value) == f"state dict {path} does not fit the model: {expected}"


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model."])
def test_a_wrapper_prefix_is_stripped(tmp_path, prefix):
    source = _model()
    with torch.no_grad():
        source[3].weight.add_(1.0)
    path = tmp_path / "w.safetensors"
    save_file({prefix + k: v for k, v in source.state_dict().items()}, str(path))
    loaded = load_state_dict_file(_model(), path)
    assert torch.equal(loaded[3].weight, source[3].weight)


def test_a_prefix_is_not_stripped_when_the_rest_does_not_fit(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"module.other": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match="unexpected key: module.other"):
        load_state_dict_file(_model(), path)


def test_mismatch_is_empty_when_it_fits():
    assert state_dict_mismatch(_model().state_dict(), _model().state_dict()) == ""


def test_a_whole_pickled_model_gives_its_state_dict_only_with_trust(tmp_path):
    source = _model()
    with torch.no_grad():
        source[3].bias.fill_(0.5)
    path = tmp_path / "whole.pt"
    torch.save(source, path)
    with pytest.raises(CheckpointError, match="opt in with --trust-checkpoint"):
        load_state_dict_file(_model(), path)
    with pytest.warns(UserWarning, match="with trust"):
        loaded = load_state_dict_file(_model(), path, trust=True)
    assert loaded[3].bias.tolist() == [0.5, 0.5, 0.5]


def test_a_safetensors_file_under_another_suffix_loads(tmp_path):
    source = _model()
    path = tmp_path / "pytorch_model.bin"
    save_file(source.state_dict(), str(path))
    # before: torch.load failed with a multi-line message advising weights_only=False
    loaded = load_state_dict_file(_model(), path)
    assert torch.equal(loaded[0].weight, source[0].weight)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"hello, not a checkpoint\n", "(KeyError: 101)"),
        (b"\x80\x02K\x01.garbage", "(RuntimeError: Invalid magic number; corrupt file?)"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_one_line(tmp_path, content, detail):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(_model(), path)
    message = str(info.value)
    assert message.startswith(
        f"cannot read checkpoint {path}: not a file written by torch.save nor a safetensors file, or a damaged one "
    )
    assert detail in message and "\n" not in message and "weights_only" not in message
