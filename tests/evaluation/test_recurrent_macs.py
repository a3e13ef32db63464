"""MACs of recurrent layers: the fused LSTM/GRU/RNN op is invisible to torch's FLOP counter, so an LSTM
classifier used to be reported as running only its head's MACs (96 instead of 102,496)."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from netcompress.evaluation.macs import count_macs, count_total_macs


class Classifier(nn.Module):
    def __init__(self, rnn: nn.Module, hidden: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize(("cls", "gates"), [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_recurrent_classifier_counts_every_gate_and_step(cls, gates):
    model = Classifier(cls(8, 32, batch_first=True), 32)
    x = torch.randn(2, 20, 8)
    rnn_macs = 2 * 20 * gates * 32 * (8 + 32)
    total, layers = count_macs(model, x)
    assert layers == {"rnn": rnn_macs, "head": 2 * 32 * 3}
    assert total == count_total_macs(model, x) == rnn_macs + 2 * 32 * 3


def test_stacked_bidirectional_projected_lstm():
    lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True, proj_size=4)  # time-major input (T, B, F)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = count_total_macs(lstm, torch.randn(5, 3, 8))
    layer1 = 2 * (4 * 16 * (8 + 4) + 4 * 16)
    layer2 = 2 * (4 * 16 * (2 * 4 + 4) + 4 * 16)
    assert total == 15 * (layer1 + layer2)


def test_packed_sequence_counts_only_real_steps():
    gru = nn.GRU(4, 6, batch_first=True)
    packed = pack_padded_sequence(torch.randn(3, 5, 4), torch.tensor([5, 3, 2]), batch_first=True)

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = gru

        def forward(self, x):
            return self.gru(packed)[1]

    assert count_total_macs(Packed(), torch.zeros(1)) == (5 + 3 + 2) * 3 * 6 * (4 + 6)


def test_dynamic_int8_lstm_keeps_its_macs():
    model = Classifier(nn.LSTM(8, 16, batch_first=True), 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM}, dtype=torch.qint8)
        assert count_macs(q, torch.randn(1, 7, 8))[1]["rnn"] == 7 * 4 * 16 * (8 + 16)
