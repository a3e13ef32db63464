"""Attention maps of a block whose mask is not its second positional argument (MobileBERT).

MobileBERT's self-attention is called ``(query, key, value, attention_mask)``: the taps took the key
tensor for the mask (a CRASH adding (N, L, 16) to (N, H, L, L) scores). The mask is now the first later
positional tensor shaped like the scores; the maps are checked against the block's own output.
"""

from __future__ import annotations

import copy

import pytest
import torch

import netcompress as nc
from tests.tiny_hf import mobilebert

transformers = pytest.importorskip("transformers")


def test_distill_reads_mobilebert_attention_with_its_positional_mask():
    teacher = mobilebert(feedforward_networks=1)
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(2):
        mask = torch.ones(4, 7, dtype=torch.long)
        mask[0, 4:] = 0  # padding: a mask read from the wrong argument would not match the block
        batches.append(({"input_ids": torch.randint(2, 50, (4, 7), generator=gen), "attention_mask": mask},
                        torch.randint(0, 3, (4,), generator=gen)))  # fmt: skip
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.data.add_(0.05 * torch.randn(p.shape, generator=gen))
    before = copy.deepcopy(student.state_dict())
    s = nc.distill_transformer_(
        student, teacher, batches, example_inputs=batches[0][0], epochs=1, progress=False
    )
    assert s["final_attention_loss"] > 0  # the maps were read (and verified) and distilled
    assert s["layer_map"] == [1]
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
