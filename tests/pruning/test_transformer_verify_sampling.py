"""Transformer pruning of a model whose forward samples (zoo round 4, session 12: ViLT draws its image patches
with torch.multinomial, in eval mode too): the masked original and the pruned copy drew different patches, and
the check refused ("differs from the masked original by 3.85e-02"). Both now run under one seed; the pruned
ViLT equals the masked original."""

from __future__ import annotations

import pytest
import torch

import netcompress as nc


def test_vilt_prunes_and_is_checked_under_one_seed():
    t = pytest.importorskip("transformers")
    t.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = t.ViltConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                       vocab_size=99, max_position_embeddings=64, image_size=32, patch_size=8,
                       max_image_length=-1, num_labels=5)  # fmt: skip
    model = t.ViltForQuestionAnswering(cfg).eval()
    g = torch.Generator().manual_seed(1)
    x = {"input_ids": torch.randint(2, 99, (2, 7), generator=g), "attention_mask": torch.ones(2, 7, dtype=torch.long),
         "pixel_values": torch.randn(2, 3, 32, 32, generator=g)}  # fmt: skip
    small = nc.prune_transformer(model, x, heads=0.5, ffn=0.5)
    assert small.vilt.encoder.layer[0].attention.attention.num_attention_heads == 2
    assert small(**x).logits.shape == (2, 5)
