"""The quantize summary names the weight layers no wrapper takes (zoo round 4, session 12): an LSTM classifier
"quantized" to int8 kept its LSTM (most of its weights) in float, and nothing in the summary said so."""

from __future__ import annotations

import torch
from torch import nn

import netcompress as nc
from netcompress.quantization.summary import quantization_summary


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.lstm(self.embed(ids))[0][:, -1])


def test_lstm_and_embedding_left_float_are_named():
    torch.manual_seed(0)
    model = Mixed().eval()
    calib = [torch.randint(0, 20, (4, 6)) for _ in range(2)]
    for mode in ("static", "dynamic"):
        q = nc.quantize(model, calib, mode=mode)
        s = quantization_summary(q, inputs=calib[0])
        assert list(s["layers"]) == ["head"]
        assert s["not_quantizable"] == {"embed": "Embedding", "lstm": "LSTM"}


def test_quantized_layers_are_not_listed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 3, 2, stride=2)).eval()
    q = nc.quantize(model, [torch.randn(2, 3, 8, 8)], mode="static")
    s = quantization_summary(q)
    assert s["not_quantizable"] == {"2": "ConvTranspose2d"} and "0" in s["layers"]
