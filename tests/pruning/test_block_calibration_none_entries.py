"""A ModuleList holding None (x-transformers keeps its optional norms as ``ModuleList([norm, None, None])`` inside
each layer's ``ModuleList([norms, block, residual])``): block calibration crashed with
``'NoneType' object has no attribute 'modules'``; now it falls back to whole-model passes and says why."""

from __future__ import annotations

import torch
from torch import nn

from netcompress.pruning import prune_wanda_


class _FeedForward(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class _XStyle(nn.Module):
    def __init__(self, depth: int = 3, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, width)
        self.layers = nn.ModuleList(
            nn.ModuleList([nn.ModuleList([nn.LayerNorm(width), None, None]), _FeedForward(width)])
            for _ in range(depth)
        )
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for (pre_norm, post_norm, _), block in self.layers:
            out = block(pre_norm(h))
            h = h + (post_norm(out) if post_norm is not None else out)
        return self.head(h)


def test_none_entries_calibrate_like_whole_model_passes():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(6, 5, 4, generator=g) for _ in range(2)]
    fast, slow = _XStyle(), _XStyle()
    summary = prune_wanda_(fast, batches, amount=0.5, calibration="auto")
    prune_wanda_(slow, batches, amount=0.5, calibration="model")
    # the layers' ModuleLists are never called as modules: whole-model passes, the reason named
    assert summary["calibration"] == "model" and "called 0 times" in summary["calibration_note"]
    assert len(summary["per_layer"]) == 8
    for (key, value), other in zip(fast.state_dict().items(), slow.state_dict().values(), strict=True):
        assert torch.equal(value, other) if key.endswith("_mask") else torch.allclose(value, other, atol=1e-6)
    assert all(float((m.weight == 0).float().mean()) == 0.5 for m in fast.modules() if isinstance(m, nn.Linear))
