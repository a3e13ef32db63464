"""A float mask as long as the token ids gets the same dynamic sequence axis (a user's own text model)."""

from __future__ import annotations

import torch
from torch import nn

import netcompress as nc
from netcompress.export.onnx_inputs import infer_dynamic_axes, input_spec


class FloatMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(50, 8), nn.Linear(8, 2)

    def forward(self, input_ids, mask):
        return self.head((self.emb(input_ids) * mask.unsqueeze(-1)).mean(1))


def test_a_float_mask_follows_the_token_ids_sequence_axis(tmp_path):
    x = {"input_ids": torch.randint(0, 50, (1, 6)), "mask": torch.ones(1, 6), "image": torch.ones(1, 3)}
    axes = infer_dynamic_axes(input_spec(x), ["output"], [torch.zeros(1, 2)])
    assert axes == {
        "input_ids": {0: "batch", 1: "sequence"},
        "mask": {0: "batch", 1: "sequence"},
        "image": {0: "batch"},  # another length: not the sequence
        "output": {0: "batch"},
    }
    model = FloatMask().eval()
    inputs = {"input_ids": torch.randint(0, 50, (1, 6)), "mask": torch.ones(1, 6)}
    # before: the check ran a shorter sequence of ids with the 6-long mask and ONNX Runtime failed (raw Fail)
    info = nc.export_onnx(model, tmp_path / "m.onnx", inputs, check=True)
    assert info["dynamic_axes"]["mask"] == {"0": "batch", "1": "sequence"}
