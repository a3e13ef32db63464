"""export_onnx's check compares token outputs at real tokens only when an ``attention_mask`` is given."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.errors import ExportMismatchError
from netcompress.export import export_onnx
from netcompress.export.onnx_inputs import mask_padding


class PaddingNoise(nn.Module):
    """Token states whose padding positions (and, with ``real_too``, one real position) differ
    between PyTorch and the exported graph, as rounding makes them differ in an int8 model."""

    def __init__(self, real_too: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.real_too = real_too

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        if torch.onnx.is_in_onnx_export():
            return h
        noise = 5.0 * (1 - attention_mask).unsqueeze(-1).to(h.dtype)
        if self.real_too:
            noise = noise.clone()
            noise[:, 0] += 5.0  # position 0 is a real token in every example row
        return h + noise


def _example() -> dict[str, torch.Tensor]:
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, 3:] = 0
    mask[2, 5:] = 0
    return {
        "input_ids": torch.randint(2, 20, (3, 6), generator=torch.Generator().manual_seed(0)),
        "attention_mask": mask,
    }


def test_padding_positions_are_not_compared(tmp_path):
    torch.manual_seed(0)
    s = export_onnx(PaddingNoise(), tmp_path / "m.onnx", _example())
    check = s["check"]
    assert check["max_abs_diff"] < 1e-6
    assert check["input_sets"] == ["example", "random batch of 8", "shorter sequence"]
    # example: 4 padded positions; random batch: rows of the example's mask; shorter: 1 (row 0, 3 of 3 kept)
    assert check["padding_positions_masked"] >= 4


def test_a_difference_at_a_real_token_still_fails(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ExportMismatchError, match="differs from PyTorch"):
        export_onnx(PaddingNoise(real_too=True), tmp_path / "m.onnx", _example())


def test_pooled_outputs_and_models_without_a_mask_are_compared_whole():
    ids, mask = torch.zeros(2, 4, dtype=torch.long), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    tokens, pooled = torch.ones(2, 4, 3), torch.ones(2, 3)
    ref, got, n = mask_padding(
        ["input_ids", "attention_mask"], [ids, mask], [tokens, pooled], [tokens * 2, pooled]
    )
    assert n == 2
    assert ref[0][0, 2:].abs().sum() == 0 and got[0][0, 2:].abs().sum() == 0
    assert torch.equal(got[0][1], 2 * tokens[1]) and torch.equal(got[0][0, :2], 2 * tokens[0, :2])
    assert got[1] is pooled
    same = mask_padding(["input_ids", "mask"], [ids, mask], [tokens], [tokens * 2])
    assert same[2] == 0 and torch.equal(same[1][0], tokens * 2)
    nan = torch.full((2, 4, 3), float("nan"))
    nan[:, :2] = 1.0
    nan[1] = 1.0
    _, got, _ = mask_padding(["attention_mask"], [mask], [tokens], [nan])
    assert not got[0].isnan().any()
