"""Round 4 of the zoo (session 12): small hand-written torch structures users bring, for ``zoo_sweep_models3``.

Each class is what a user writes around torch's own layers (recurrent cells, transposed convolutions, Conv3d,
grouped / dilated convolutions, tied weights, ``nn.EmbeddingBag``, parameters and buffers read outside any
module); widths are tiny and the weights random.

Example:
    >>> RNNClassifier("LSTM", layers=2, bidirectional=True)(torch.randint(0, 99, (2, 9))).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

LABELS = 10
VOCAB = 99


class RNNClassifier(nn.Module):
    """Embedding -> nn.LSTM / GRU / RNN -> the last step's features -> Linear."""

    def __init__(
        self, cell: str, layers: int = 1, bidirectional: bool = False, batch_first: bool = True, proj: int = 0
    ) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(VOCAB, 16)
        extra = {"proj_size": proj} if proj else {}
        self.rnn = getattr(nn, cell)(
            16, 24, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, **extra
        )
        self.head = nn.Linear((proj or 24) * (2 if bidirectional else 1), LABELS)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if not self.batch_first:
            x = x.transpose(0, 1)
        y, _ = self.rnn(x)
        return self.head(y[:, -1] if self.batch_first else y[-1])


class FeatureGRU(nn.Module):
    """Float features (N, L, F) -> Linear -> sequence-first GRU (2 layers) -> mean over time -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(12, 16)
        self.gru = nn.GRU(16, 24, num_layers=2, batch_first=False)
        self.head = nn.Linear(24, LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(torch.relu(self.inp(x)).transpose(0, 1))
        return self.head(y.mean(0))


class LSTMAttention(nn.Module):
    """Bidirectional LSTM with additive attention pooling under the padding mask."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.lstm = nn.LSTM(16, 16, batch_first=True, bidirectional=True)
        self.score = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 1))
        self.head = nn.Linear(32, LABELS)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(self.embed(input_ids))
        s = self.score(y).squeeze(-1).masked_fill(attention_mask == 0, -1e4)
        return self.head((s.softmax(-1).unsqueeze(-1) * y).sum(1))


class ConvGRUAudio(nn.Module):
    """Raw waveform (N, T) -> two strided Conv1d + BatchNorm -> GRU -> mean -> Linear (a small KWS model)."""

    def __init__(self) -> None:
        super().__init__()
        self.front = nn.Sequential(
            nn.Conv1d(1, 16, 10, stride=5), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Conv1d(16, 24, 3, stride=2), nn.BatchNorm1d(24), nn.ReLU(),
        )  # fmt: skip
        self.gru = nn.GRU(24, 24, batch_first=True)
        self.head = nn.Linear(24, LABELS)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(self.front(wave.unsqueeze(1)).transpose(1, 2))
        return self.head(y.mean(1))


def _cbr(cin: int, cout: int, **kw: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=kw.pop("padding", 1), **kw), nn.BatchNorm2d(cout), nn.ReLU())


class UNetTranspose(nn.Module):
    """Encoder, strided down-sampling, ConvTranspose2d up-sampling, a skip concatenation, 1x1 head (dense output)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = _cbr(3, 8)
        self.down = _cbr(8, 16, stride=2)
        self.mid = _cbr(16, 16)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = _cbr(16, 8)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        return self.out(self.dec(torch.cat([self.up(self.mid(self.down(e))), e], 1)))


class UNetUpsample(nn.Module):
    """Max-pool down, nn.Upsample (bilinear) up, an additive skip; per-pixel class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = _cbr(3, 16)
        self.mid = nn.Sequential(nn.MaxPool2d(2), _cbr(16, 32), _cbr(32, 16))
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec = _cbr(16, 16)
        self.out = nn.Conv2d(16, LABELS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        return self.out(self.dec(self.up(self.mid(e)) + e))


class Video3D(nn.Module):
    """Clips (N, 3, T, H, W): Conv3d + BatchNorm3d, a (2+1)D block (spatial then temporal Conv3d), pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU())
        self.spatial = nn.Sequential(nn.Conv3d(8, 16, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
                                     nn.BatchNorm3d(16), nn.ReLU())  # fmt: skip
        self.temporal = nn.Sequential(nn.Conv3d(16, 16, (3, 1, 1), padding=(1, 0, 0)), nn.BatchNorm3d(16),
                                      nn.ReLU())  # fmt: skip
        self.head = nn.Linear(16, LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool3d(self.temporal(self.spatial(self.stem(x))), 1).flatten(1))


class GroupedDilated(nn.Module):
    """Grouped (groups=4) dilated conv, a depthwise conv, a pointwise conv, a residual sum."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.grouped = _cbr(16, 16, groups=4, dilation=2, padding=2)
        self.depthwise = _cbr(16, 16, groups=16)
        self.point = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = self.point(self.depthwise(self.grouped(s)) + s)
        return self.head(y.mean((2, 3)))


class TiedGRULM(nn.Module):
    """A GRU language model whose output Linear shares the embedding's weight (weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.gru = nn.GRU(32, 32, batch_first=True)
        self.proj = nn.Linear(32, 32)
        self.lm_head = nn.Linear(32, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(self.embed(ids))
        return self.lm_head(torch.tanh(self.proj(y)))


class EmbeddingBagRecommender(nn.Module):
    """DLRM-like: two nn.EmbeddingBag tables (fixed-size bags), a dense MLP, a dot interaction, a top MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.users = nn.EmbeddingBag(50, 8, mode="mean")
        self.items = nn.EmbeddingBag(60, 8, mode="sum")
        self.dense = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.top = nn.Sequential(nn.Linear(25, 16), nn.ReLU(), nn.Linear(16, LABELS))

    def forward(self, user_bags: torch.Tensor, item_bags: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        u, i, d = self.users(user_bags), self.items(item_bags), self.dense(dense)
        return self.top(torch.cat([u, i, d, (u * i).sum(-1, keepdim=True)], -1))


class OutsideParams(nn.Module):
    """Buffers and parameters read outside any module: input normalisation buffers, a learned position table,
    a per-channel gain after a Linear and after a Conv, a learned temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.linspace(-0.5, 0.5, 3).view(1, 3, 1, 1))
        self.register_buffer("std", torch.linspace(0.8, 1.2, 3).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.conv_gain = nn.Parameter(torch.linspace(0.5, 1.5, 16))
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.pos = nn.Parameter(torch.randn(1, 16, 16) * 0.1)
        self.fc = nn.Linear(16, 24)
        self.fc_gain = nn.Parameter(torch.linspace(0.5, 1.5, 24))
        self.head = nn.Linear(24, LABELS)
        self.temperature = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        h = torch.relu(self.conv(x) * self.conv_gain.view(1, -1, 1, 1))
        tokens = self.conv2(h).flatten(2).transpose(1, 2) + self.pos  # 8x8 images: 16 tokens of 16 channels
        h = torch.relu(self.fc(tokens) * self.fc_gain)
        return self.head(h.mean(1)) / self.temperature
