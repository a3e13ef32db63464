"""The main tensor of a Hugging Face ``ModelOutput`` is ``logits`` or its first field that is no loss (zoo round
4, session 12): PatchTSMixer returns ``prediction_outputs`` before an auxiliary ``last_hidden_state``, BLIP's
image-text matching ``itm_score`` before the vision states; ``last_hidden_state`` was taken, so fitting PatchTSMixer's
classifier on class labels was refused and distillation matched the wrong tensor."""

from __future__ import annotations

import collections

import torch

from netcompress.core.inputs import output_tensor


def _output(**fields):
    return collections.OrderedDict((k, v) for k, v in fields.items() if v is not None)


def test_the_first_field_that_is_no_loss_is_the_main_tensor():
    pred, hidden, loss = torch.ones(2, 4), torch.zeros(2, 3, 8), torch.tensor(1.5)
    assert output_tensor(_output(prediction_outputs=pred, last_hidden_state=hidden)) is pred
    assert output_tensor(_output(loss=loss, prediction_outputs=pred, last_hidden_state=hidden)) is pred
    assert output_tensor(_output(itm_score=pred, image_embeds=hidden, last_hidden_state=hidden)) is pred


def test_logits_and_a_leading_last_hidden_state_are_still_chosen():
    logits, hidden = torch.ones(2, 4), torch.zeros(2, 3, 8)
    assert output_tensor(_output(loss=torch.tensor(0.1), hidden_states=hidden, logits=logits)) is logits
    assert output_tensor(_output(last_hidden_state=hidden, pooler_output=logits)) is hidden
    assert output_tensor((hidden, logits)) is hidden


def test_a_real_patchtsmixer_classifier_gives_its_predictions():
    import pytest

    t = pytest.importorskip("transformers")
    cfg = t.PatchTSMixerConfig(context_length=16, patch_length=8, patch_stride=8, num_input_channels=2, d_model=8,
                               num_layers=1, num_targets=3)  # fmt: skip
    model = t.PatchTSMixerForTimeSeriesClassification(cfg).eval()
    out = model(past_values=torch.randn(2, 16, 2))
    assert output_tensor(out) is out.prediction_outputs and out.prediction_outputs.shape == (2, 3)
