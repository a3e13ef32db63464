"""The three forms a model is called with (tensor, tuple, dict) and how a batch splits."""

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.inputs import (
    args_kwargs,
    batch_size_of,
    call_model,
    move_inputs,
    output_tensor,
    slice_batch,
    split_batch,
)


class TwoInputs(nn.Module):
    def forward(self, ids, mask=None):
        return ids.float() * (1.0 if mask is None else mask.float())


def test_call_model_forms_reach_the_same_arguments():
    ids = torch.tensor([[1, 2, 3]])
    mask = torch.tensor([[1, 0, 1]])
    expected = torch.tensor([[1.0, 0.0, 3.0]])
    model = TwoInputs()
    assert torch.equal(call_model(model, (ids, mask)), expected)
    assert torch.equal(call_model(model, [ids, mask]), expected)
    assert torch.equal(call_model(model, {"ids": ids, "mask": mask}), expected)
    assert torch.equal(call_model(model, ids), ids.float())


def test_args_kwargs_rejects_what_is_not_tensors():
    with pytest.raises(ConfigError, match="empty sequence"):
        args_kwargs(())
    with pytest.raises(ConfigError, match="only tensors, got int"):
        args_kwargs((torch.zeros(1), 3))
    with pytest.raises(ConfigError, match="not a tensor: mask"):
        args_kwargs({"ids": torch.zeros(1), "mask": [1]})
    with pytest.raises(ConfigError, match="got str"):
        args_kwargs("x")


def test_split_batch_forms():
    x, y = torch.zeros(4, 3), torch.arange(4)
    assert split_batch((x, y))[1] is y
    inputs, targets = split_batch(((x, x), y))
    assert isinstance(inputs, tuple) and targets is y
    inputs, targets = split_batch({"input_ids": x, "attention_mask": x, "labels": y})
    assert sorted(inputs) == ["attention_mask", "input_ids"] and targets is y
    inputs, targets = split_batch({"input_ids": x})
    assert targets is None and list(inputs) == ["input_ids"]
    assert split_batch(x) == (x, None)
    with pytest.raises(ConfigError, match="3 items"):
        split_batch((x, x, y))


def test_sizes_slices_and_moves_keep_the_form():
    batch = {"ids": torch.zeros(6, 5, dtype=torch.long), "mask": torch.ones(6, 5)}
    assert batch_size_of(batch) == 6
    part = slice_batch(batch, 1, 3)
    assert part["ids"].shape == (2, 5) and part["ids"].dtype == torch.long
    moved = move_inputs((torch.zeros(2), torch.ones(2)), "cpu")
    assert isinstance(moved, tuple) and len(moved) == 2
    with pytest.raises(ConfigError, match="batch dimension"):
        batch_size_of(torch.tensor(1.0))


def test_output_tensor_finds_the_main_output():
    logits = torch.ones(2, 3)
    assert output_tensor(logits) is logits
    assert output_tensor({"logits": logits, "hidden": torch.zeros(1)}) is logits
    assert output_tensor({"last_hidden_state": logits}) is logits
    assert output_tensor((logits, torch.zeros(1))) is logits

    class Out:
        def __init__(self):
            self.logits = logits

    assert output_tensor(Out()) is logits
    with pytest.raises(ConfigError, match="returned int"):
        output_tensor(3)
