"""nc.save of a Hugging Face model after ``output_hidden_states=True``: transformers 5 installs inert
output-capturing closures as forward hooks (and a flag) on first use; save refused them ("'output_capturing_hook'
is not a function of torch"), e.g. a wav2vec 2.0 teacher after distill_transformer_. They are left out, and
the loaded model installs them again when asked for hidden states."""

from __future__ import annotations

import pytest
import torch

import netcompress as nc

transformers = pytest.importorskip("transformers")


def test_save_after_hidden_states_were_requested(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
                                  vocab_size=40, max_position_embeddings=16)  # fmt: skip
    model = transformers.BertModel(cfg).eval()
    x = {"input_ids": torch.randint(1, 40, (2, 5), generator=torch.Generator().manual_seed(1))}
    with torch.no_grad():
        states = model(**x, output_hidden_states=True).hidden_states
    assert any(m._forward_hooks for m in model.modules())  # what transformers installed
    saved = nc.save(model, tmp_path / "m.nc", example_inputs=x)
    back = nc.load(tmp_path / "m.nc", allow_modules=saved["allow_modules"])
    assert not any(m._forward_hooks for m in back.modules())
    with torch.no_grad():
        again = back(**x, output_hidden_states=True).hidden_states  # installs them again
    assert len(again) == len(states) == 3
    assert all(torch.equal(a, b) for a, b in zip(again, states, strict=True))
