"""Graph-batch inputs (PyTorch Geometric): node features (nodes, F), an int64 (2, edges) ``edge_index`` and a
per-node graph id, pooled to one row per graph. Export tied every input's and output's dim 0 to one ``batch``
symbol and the check reshaped the (graphs, classes) output by the node count: a raw "shape '[12, -1]' is invalid".
Now only tensors whose dim 0 is the first input's are batch-dynamic, and the check compares such outputs whole."""

from __future__ import annotations

import torch
from torch import nn

import netcompress as nc

GRAPHS, NODES = 2, 6


class MeanPoolGraph(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin, self.head = nn.Linear(8, 16), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.lin(x))
        src, dst = edge_index[0], edge_index[1]
        h = h + torch.zeros_like(h).scatter_add(0, dst[:, None].expand(-1, h.shape[1]), h[src])  # messages
        pooled = torch.zeros(GRAPHS, h.shape[1]).scatter_add(0, batch[:, None].expand(-1, h.shape[1]), h) / NODES
        return self.head(pooled)


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ring = torch.arange(NODES)
    edges = torch.cat([torch.stack([ring, (ring + 1) % NODES]) + i * NODES for i in range(GRAPHS)], 1)
    return torch.randn(GRAPHS * NODES, 8, generator=g), edges, torch.arange(GRAPHS).repeat_interleave(NODES)


def test_graph_batch_exports_and_checks(tmp_path):
    torch.manual_seed(0)
    model, x = MeanPoolGraph().eval(), _inputs()
    s = nc.export_onnx(model, tmp_path / "g.onnx", x, check=True)
    axes = s["dynamic_axes"]  # input_1 (edge_index): its edge count varies, its 2 rows do not
    assert axes == {"input_0": {"0": "batch"}, "input_1": {"1": "sequence"}, "input_2": {"0": "batch"}}
    assert s["check"]["max_rel_diff"] < 1e-5 and s["check"]["input_sets"] == ["example", "shorter sequence"]
    q = nc.quantize(model, [(x, torch.zeros(GRAPHS, dtype=torch.long))], bits=8)
    s8 = nc.export_onnx(q, tmp_path / "g8.onnx", x, int8=True, check=True)
    assert s8["check"]["max_rel_diff"] < 0.05
