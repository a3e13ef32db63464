"""A teacher named like the recipe's own model block: ``teacher: {model: {factory, kwargs, checkpoint}}``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.core.methods import MethodData
from netcompress.distillation.teacher_loading import load_teacher, teacher_for_step

SOURCE = """
from torch import nn

def build(num_classes=3, features=4):
    return nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, num_classes))
"""


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "teacher_user_model.py"
    path.write_text(SOURCE)
    return f"{path}:build"


def test_model_block_with_factory_and_checkpoint(tmp_path, factory):
    torch.manual_seed(0)
    state = {
        "0.weight": torch.randn(8, 4),
        "0.bias": torch.randn(8),
        "2.weight": torch.randn(3, 8),
        "2.bias": torch.ones(3),
    }
    save_file(state, str(tmp_path / "t.safetensors"))
    spec = {
        "model": {
            "factory": factory,
            "kwargs": {"num_classes": 3},
            "checkpoint": str(tmp_path / "t.safetensors"),
        }
    }
    # before: "unknown model None" (the block was read as a registry name plus kwargs)
    teacher = load_teacher(spec, num_classes=3)
    assert torch.equal(teacher[2].bias, torch.ones(3)) and torch.equal(teacher[0].weight, state["0.weight"])
    assert isinstance(
        load_teacher({"model": {"factory": factory, "checkpoint": None}}, num_classes=3), torch.nn.Module
    )
    state["2.weight"] = torch.zeros(3, 5)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_teacher(
            {"model": {"factory": factory, "checkpoint": str(tmp_path / "bad.safetensors")}}, num_classes=3
        )
    assert str(info.value).endswith(
        "does not fit teacher.model: 1 tensor of the wrong shape: 2.weight (file (3, 5), model (3, 8))"
    )
    with pytest.raises(ConfigError, match="teacher.model needs 'name'"):
        load_teacher({"model": {"kwargs": {}}}, num_classes=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 5}, "the teacher gives 5 class scores per sample but the data has 3 classes"),
        (
            {"features": 6},
            "the teacher fails on one sample of the data (inputs float32 (1, 4)): RuntimeError",
        ),
    ],
)
def test_a_teacher_that_does_not_fit_the_data_is_one_line(factory, kwargs, message):
    ctx = MethodData(example_inputs=torch.randn(1, 4), num_classes=3)
    with pytest.raises(ConfigError) as info:
        teacher_for_step({"factory": factory, "kwargs": kwargs}, ctx)
    assert str(info.value).startswith(message)
