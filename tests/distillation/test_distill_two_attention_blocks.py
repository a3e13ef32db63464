"""Distilling an encoder-decoder (zoo round 4, session 12: BART, Marian, Pegasus, Whisper, DETR, BLIP,
time-series transformers): a decoder layer holds a self- and a cross-attention, so attention maps are refused;
the refusal now says what works, hidden-state distillation (attention_weight=0, value_weight=0), which runs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"src": torch.randn(4, 5, 16, generator=g), "tgt": torch.randn(4, 3, 16, generator=g)}


def test_two_attention_blocks_refuse_maps_and_distil_hidden_states():
    torch.manual_seed(0)
    teacher = nn.Transformer(16, 2, 1, 1, dim_feedforward=24, dropout=0.0, batch_first=True).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batches, x = [_batch(1), _batch(2)], _batch(3)
    with pytest.raises(UnsupportedModelError, match=r"holds 2 attention blocks.*attention_weight=0, value_weight=0"):
        nc.distill_transformer_(student, teacher, batches, example_inputs=x, epochs=1, progress=False)
    before = copy.deepcopy(student.state_dict())
    nc.distill_transformer_(student, teacher, batches, example_inputs=x, epochs=1, progress=False,
                            attention_weight=0, value_weight=0)  # fmt: skip
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert torch.isfinite(student.eval()(**x)).all()
