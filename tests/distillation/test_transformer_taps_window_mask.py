"""Attention maps of a block whose mask does not fit its (N, heads, L, S) scores (Longformer's sliding-window
attention): distillation refuses the maps with advice (attention_weight=0 and value_weight=0) and, following
it, distils the hidden states. Before, adding the mask to the scores raised a bare RuntimeError (zoo round 7)."""

from __future__ import annotations

import copy

import pytest
import torch

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError

transformers = pytest.importorskip("transformers")


def _longformer() -> torch.nn.Module:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.LongformerConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=24, max_position_embeddings=32, attention_window=4,
                                        pad_token_id=1, num_labels=3)  # fmt: skip
    return transformers.LongformerForSequenceClassification(cfg).eval()


def test_a_window_mask_is_refused_with_advice_and_hidden_states_distil():
    teacher = _longformer()
    gen = torch.Generator().manual_seed(1)
    batches = [({"input_ids": torch.randint(2, 50, (2, 8), generator=gen), "attention_mask": torch.ones(2, 8).long()},
                torch.randint(0, 3, (2,), generator=gen)) for _ in range(2)]  # fmt: skip
    student = copy.deepcopy(teacher)
    with pytest.raises(UnsupportedModelError, match=r"attention mask does not fit its \(N, heads, L, S\) scores.*"
                                                   r"attention_weight=0 and value_weight=0"):  # fmt: skip
        nc.distill_transformer_(student, teacher, batches, example_inputs=batches[0][0], epochs=1, progress=False)
    before = copy.deepcopy(student.state_dict())
    s = nc.distill_transformer_(student, teacher, batches, example_inputs=batches[0][0], epochs=1, progress=False,
                                attention_weight=0, value_weight=0)  # fmt: skip
    assert s["layer_map"] == [1]
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
