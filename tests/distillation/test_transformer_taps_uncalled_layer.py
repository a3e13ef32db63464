"""vit-pytorch, x-transformers and rtdl keep a layer's blocks in a ModuleList / ModuleDict and call the blocks one
by one: no module returns a layer's output, so hidden-state distillation has nothing to read. Since the transformer
pruner recognises their attention (session 14) the distiller got that far and said only "nothing was captured for
'out1'"; it now names the uncalled container. Since the distiller reads the residual stream from such a container's
children (test_transformer_taps_looped_layers.py), the refusal stays where no layer boundary shows the stream.
Since session 15 an attention container and the containers after it (x-transformers' feed-forward) are one layer
(test_transformer_taps_layer_groups.py); this layout adds the residual in the loop, so it stays refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError
from tests.tiny_attention import Attention


class Blocks(nn.Module):
    """x-transformers' layout: ``layers`` alternates attention and feed-forward containers
    (``ModuleList([norm, block])`` each), the loop adds the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([nn.LayerNorm(16), Attention() if i % 2 == 0 else nn.Sequential(
                nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 16))])
            for i in range(4)
        )  # fmt: skip

    def forward(self, x):
        for norm, block in self.layers:
            x = x + block(norm(x))
        return x


def test_an_uncalled_layer_container_is_named() -> None:
    torch.manual_seed(0)
    teacher = Blocks().eval()
    batches = [torch.randn(2, 5, 16) for _ in range(2)]
    small = nc.prune_transformer(teacher, batches[0], heads=0.5, ffn=0.5)  # the attention is recognised
    assert small.layers[0][1].heads == 1
    # the attention container and the feed-forward one after it are one layer (x-transformers), but here the loop
    # adds the residual: the next layer's input is neither the last block's output nor output + input
    with pytest.raises(UnsupportedModelError, match=r"layer 'layers\.0' is a ModuleList the model never calls.*"
                       r"neither the last block's output"):
        nc.distill_transformer_(copy.deepcopy(teacher), teacher, batches, example_inputs=batches[0], epochs=1,
                                progress=False)  # fmt: skip
