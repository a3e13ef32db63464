"""What every learned exit gate must do in the routed forward (shared by the logit- and feature-gate tests)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.dynamic import export_early_exit_onnx, route_by_scores


def check_routed_forward(
    ee: nn.Module, gates: nn.Module, scores: Sequence[torch.Tensor], all_logits: Sequence[torch.Tensor], x
) -> torch.Tensor:
    """Thresholds at each head's median score: every exit is taken by someone, the routed forward takes
    exactly the exits ``route_by_scores`` picks and returns their logits, and ONNX export is refused
    (a learned gate does not export). Returns the exit index of each sample."""
    thresholds = [float(s.median()) for s in scores]
    expected = route_by_scores(scores, thresholds)
    assert len(set(expected.tolist())) == len(scores) + 1  # every exit taken by someone
    ee.set_gate(gates, thresholds)
    with torch.no_grad():
        out = ee(x)
    assert ee.last_exit_index.tolist() == expected.tolist()
    want = torch.stack(list(all_logits))[expected, torch.arange(len(expected))]
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(UnsupportedModelError, match="learned exit gate"):
        export_early_exit_onnx(ee, "unused", x[:1])
    return expected
