"""Accuracy-aware quantization of an encoder-decoder (zoo round 4, session 12): its (N, decoder length, ...)
outputs were pooled / selected with the ENCODER's attention_mask (N, encoder length): a raw size mismatch
(T5, BART, Marian, Pegasus, M2M100). The decoder's positions take the decoder_attention_mask, or all count."""

from __future__ import annotations

import torch
from torch import nn

from netcompress.evaluation.embeddings import embed, padding_mask
from netcompress.quantization.fidelity import collect_outputs, real_tokens


class DecoderStates(nn.Module):
    def forward(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask=None):
        return decoder_input_ids.float().unsqueeze(-1).expand(-1, -1, 3) + attention_mask.sum(1).view(-1, 1, 1)


def _batch(with_decoder_mask: bool) -> dict[str, torch.Tensor]:
    b = {"input_ids": torch.ones(2, 6, dtype=torch.long), "attention_mask": torch.tensor([[1] * 6, [1] * 3 + [0] * 3]),
         "decoder_input_ids": torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])}  # fmt: skip
    if with_decoder_mask:
        b["decoder_attention_mask"] = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    return b


def test_decoder_outputs_pool_over_the_decoder_positions():
    model = DecoderStates()
    plain = embed(model, [_batch(False)])
    assert torch.allclose(plain[:, 0], torch.tensor([2.5 + 6, 6.5 + 3]))  # every decoder position
    masked = embed(model, [_batch(True)])
    assert torch.allclose(masked[:, 0], torch.tensor([2.5 + 6, 5.5 + 3]))  # the decoder's mask
    out = collect_outputs(model, [_batch(True)], metric="embedding", num_batches=1)
    assert torch.allclose(out.values, masked)


def test_agreement_keeps_the_decoder_tokens():
    logits = torch.randn(2, 4, 5)
    assert padding_mask(_batch(False)) is None
    assert real_tokens(logits, _batch(False)).shape == (8, 5)
    assert real_tokens(logits, _batch(True)).shape == (6, 5)
    assert real_tokens(torch.randn(2, 6, 5), {"attention_mask": _batch(False)["attention_mask"]}).shape == (9, 5)
