"""Inputs that do not share dim 0 (a PyTorch Geometric batch: (nodes, F) features and a (2, edges) ``edge_index``):
profile cut every input to its first row, so ``edge_index`` became (1, edges) and the model crashed (an IndexError
inside the user's model). Now they are measured as given, and ``profiled_on`` says so."""

from __future__ import annotations

import torch
from torch import nn

import netcompress as nc


class MessagePassing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin, self.head = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        agg = torch.zeros_like(h).index_add(0, edge_index[1], h[edge_index[0]])
        return self.head(torch.relu(h + agg))


def test_graph_batch_is_profiled_whole():
    nodes, edges = 12, 20
    x = torch.randn(nodes, 8)
    edge_index = torch.randint(0, nodes, (2, edges), generator=torch.Generator().manual_seed(0))
    stats = nc.profile(MessagePassing(), (x, edge_index), batch_sizes=(1, 4), repeats=2, rounds=1, warmup=1)
    assert stats["macs"] == nodes * (8 * 16 + 16 * 3)  # both Linears over every node
    assert stats["profiled_on"] == "the example as given (inputs' dim 0: [12, 2])"
    assert stats["latency_ms"] > 0 and stats["latency_b4_ms"] is None
    assert stats["peak_activation_bytes"] > 0


def test_batch_first_inputs_are_still_profiled_per_sample():
    stats = nc.profile(nn.Linear(8, 3), torch.randn(5, 8), latency=False, memory=False)
    assert stats["macs"] == 24 and stats["profiled_on"] == "one sample"
