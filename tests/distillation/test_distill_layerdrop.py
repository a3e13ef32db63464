"""Distilling a model with LayerDrop (zoo round 4, session 12: M2M100, TimeSeriesTransformer, Informer): in
training a student layer is skipped at random, so its taps capture nothing and distillation was refused. A layer
skipped under a config's ``*layerdrop`` > 0 now just has no term that step; without LayerDrop a layer that did not
run is still refused, and the message names a LayerDrop config when there is one."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError


class DropEncoder(nn.Module):
    def __init__(self, layerdrop: float) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(encoder_layerdrop=layerdrop)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(16, 2, 24, dropout=0.0, batch_first=True) for _ in range(3)
        )
        self.skip = 0.5  # what the forward does, whatever the config says

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            if self.training and i == 1 and torch.rand(()) < self.skip:
                continue
            x = layer(x)
        return x


def _run(layerdrop: float) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    teacher = DropEncoder(layerdrop).eval()
    student = copy.deepcopy(teacher)
    before = copy.deepcopy(student.state_dict())
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 5, 16, generator=g) for _ in range(6)]
    nc.distill_transformer_(student, teacher, batches, example_inputs=batches[0], epochs=1, progress=False,
                            attention_weight=0, value_weight=0)  # fmt: skip
    return student, before


def test_layers_skipped_by_layerdrop_have_no_term():
    student, before = _run(0.5)
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_a_layer_that_did_not_run_without_layerdrop_is_refused():
    with pytest.raises(UnsupportedModelError, match=r"nothing was captured for 'out2'"):
        _run(0.0)


def test_the_refusal_names_the_layerdrop_config_in_eval():
    taps_model = DropEncoder(0.3)
    from netcompress.distillation.transformer_taps import TransformerTaps

    taps = TransformerTaps(taps_model, who="student")
    with pytest.raises(UnsupportedModelError, match=r"drops layers at random in training \({'encoder_layerdrop': 0.3}\)"):
        taps.hidden(2)
