"""Shared models and references of the transformer-pruning tests (no tests here).

``HandModel`` (a hand-written attention + MLP block), ``MHAModel`` (two ``nn.TransformerEncoderLayer``),
``family_model(name)`` for those and the tiny Hugging Face families, ``masked_original`` (the original with the
removed heads' output-projection columns and removed neurons' down columns zeroed: what a pruned model must equal)
and ``model_output``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from netcompress.core.inputs import call_model, output_tensor
from netcompress.pruning.transformer_blocks import find_blocks
from tests.tiny_hf import hf_family as _hf

H = 32


class HandAttention(nn.Module):
    """A hand-written attention block: q/k/v/out Linear layers and num_heads/head_dim attributes."""

    def __init__(
        self, dim: int = H, num_heads: int = 4, interleaved: bool = False, fixed_width: bool = False
    ):
        super().__init__()
        self.num_heads, self.head_dim, self.dim = num_heads, dim // num_heads, dim
        self.interleaved, self.fixed_width = interleaved, fixed_width
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        if self.interleaved:  # channel c belongs to head c % num_heads: not the layout the pruner assumes
            return t.view(b, n, self.head_dim, self.num_heads).permute(0, 3, 1, 2)
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        att = (q @ k.transpose(-1, -2) * self.head_dim**-0.5).softmax(-1)
        out = (att @ v).transpose(1, 2)
        width = self.dim if self.fixed_width else self.num_heads * self.head_dim
        return self.out(out.reshape(b, n, width))


class MLP(nn.Module):
    def __init__(self, dim: int = H, width: int = 48):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, width), nn.GELU(), nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class HandModel(nn.Module):
    """Token embedding, one pre-norm block (hand-written attention + MLP), mean pooling, classifier."""

    def __init__(self, norm: bool = True, **attn):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, H)
        self.norm1, self.norm2 = (nn.LayerNorm(H) if norm else nn.Identity() for _ in range(2))
        self.attn, self.mlp, self.head = HandAttention(**attn), MLP(), nn.Linear(H, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + self.attn(self.norm1(h))
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(1))


class MHAModel(nn.Module):
    """Embedding + two nn.TransformerEncoderLayer (batch_first) + LayerNorm + classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, H)
        layer = nn.TransformerEncoderLayer(H, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(H), nn.Linear(H, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.emb(ids))).mean(1))


IDS = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))


def family_model(name: str):
    if name == "hand":
        return HandModel().eval(), IDS
    if name == "mha":
        return MHAModel().eval(), IDS
    return _hf(name)


FAMILIES = ["hand", "mha", "bert", "vit", "gpt2", "llama"]


def masked_original(model: nn.Module, summary: dict) -> nn.Module:
    """The original with removed heads' output columns and removed neurons' down columns set to zero."""
    ref = copy.deepcopy(model)
    blocks = {u.name: u for u in find_blocks(ref).attention}
    ffn = {u.name: u for u in find_blocks(ref).ffn}
    with torch.no_grad():
        for row in summary["heads"]:
            unit = blocks[row["name"]]
            cols = [
                h * unit.head_dim + i
                for h in range(unit.num_heads)
                if h not in row["kept"]
                for i in range(unit.head_dim)
            ]
            if unit.layout == "mha":
                ref.get_submodule(unit.name).out_proj.weight[:, cols] = 0
            elif unit.layout == "packed":  # Conv1D stores (in, out)
                ref.get_submodule(unit.o).weight[cols] = 0
            else:
                ref.get_submodule(unit.o).weight[:, cols] = 0
        for row in summary["ffn"]:
            unit, down = ffn[row["name"]], None
            down = ref.get_submodule(unit.down)
            dropped = [n for n in range(unit.width) if n not in row["kept"]]
            if type(down).__name__ == "Conv1D":
                down.weight[dropped] = 0
            else:
                down.weight[:, dropped] = 0
    return ref


def model_output(model: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        return output_tensor(call_model(model.eval(), inputs))
