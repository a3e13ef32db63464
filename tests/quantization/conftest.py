"""Small stand-in models for the quantization tests (the real model zoo is written in parallel)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """Conv-BN-ReLU x2, max pool, global average pool, Linear: the shape of the reference CNNs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class MyConv(nn.Conv2d):
    """A third-party nn.Conv2d subclass (no custom forward)."""


class ScaledConv(nn.Conv2d):
    """A subclass with its own forward: the wrapper must run it with the quantized weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class ThirdParty(nn.Module):
    """Conv subclasses, ZeroPad2d, ReLU6, functional relu, torch.add residual, cat and a GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d(1)
        self.stem = MyConv(3, 8, 3)
        self.act = nn.ReLU6()
        self.branch = ScaledConv(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.stem(self.pad(x)))
        z = F.relu(self.branch(y))
        y = torch.add(y, z)
        y = torch.cat([y, F.gelu(z)], dim=1)
        y = F.relu(self.dw(y))
        return self.head(y.mean(dim=(2, 3)))


class SincStandIn(nn.Module):
    """Duck-typed SincNet front end: kernel from ``filters()``, forward calls F.conv1d on it."""

    def __init__(self, out_channels: int = 4, kernel_size: int = 15) -> None:
        super().__init__()
        self.low = nn.Parameter(torch.linspace(0.05, 0.3, out_channels))
        self.band = nn.Parameter(torch.full((out_channels,), 0.1))
        self.register_buffer("t", torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2)

    def filters(self) -> torch.Tensor:
        low = self.low.abs()[:, None]
        high = low + self.band.abs()[:, None]
        t = self.t[None, :]
        kernel = 2 * high * torch.sinc(2 * high * t) - 2 * low * torch.sinc(2 * low * t)
        return kernel.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.filters(), padding=self.t.numel() // 2)


class TinySinc(nn.Module):
    """Sinc front end, a 1-D conv block and a classifier (E4's layer kinds)."""

    def __init__(self) -> None:
        super().__init__()
        self.sinc = SincStandIn()
        self.block = nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU())
        self.classifier = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.log1p(self.sinc(x).abs())
        return self.classifier(self.block(y).mean(dim=2))


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics so folding is really tested."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


@pytest.fixture
def small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return randomise_bn(SmallCNN())


@pytest.fixture
def image_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    return [
        (torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen))
        for _ in range(4)
    ]


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (reference - approx).pow(2).sum()
    return float(10 * torch.log10(reference.pow(2).sum() / noise.clamp(min=1e-20)))


@pytest.fixture
def nets():
    """The stand-in classes and helpers, for tests that build their own instances."""
    import types

    return types.SimpleNamespace(
        SmallCNN=SmallCNN,
        ThirdParty=ThirdParty,
        TinySinc=TinySinc,
        SincStandIn=SincStandIn,
        randomise_bn=randomise_bn,
        sqnr_db=sqnr_db,
    )


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny models gain nothing from two, and the shared 2-core machine is busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_bert() -> nn.Module:
    """A 2-layer Hugging Face BERT (hidden 32, 4 heads, FFN 37, vocabulary 99) with seed-0 weights, eval mode."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99
    )
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def bert_batches(seed: int, n: int = 2) -> list[dict[str, torch.Tensor]]:
    """``n`` dict batches for :func:`tiny_bert`: 8 x 12 token ids and a mask with one padded row."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 99, (8, 12), generator=gen)
        mask = torch.ones(8, 12, dtype=torch.long)
        mask[0, 8:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


OUTLIER = 5  # the planted outlier channel of every GELU output of :func:`outlier_bert`


def outlier_bert() -> nn.Module:
    """:func:`tiny_bert` with one GELU channel (:data:`OUTLIER`) far above the others, as trained encoders have."""
    model = tiny_bert()
    with torch.no_grad():
        for i in (0, 1):
            model.get_submodule(f"encoder.layer.{i}.intermediate.dense").bias[OUTLIER] = 25.0
    return model
