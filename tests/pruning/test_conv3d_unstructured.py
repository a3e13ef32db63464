"""Conv3d weights in unstructured pruning (MONAI's 3-D U-Net and SegResNet hold no other weighted layer than
Conv3d / ConvTranspose3d): magnitude (layer-wise and global), Wanda, N:M and SparseGPT cover them; Wanda and
SparseGPT read their inputs unfolded into rows (torch has no 3-D ``F.unfold``)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.pruning import prune_n_m_, prune_sparsegpt_, prune_unstructured_, prune_wanda_
from netcompress.pruning.weight_targets import conv_rows


@pytest.mark.parametrize(
    ("kw", "shape"),
    [
        (dict(kernel_size=3, padding=1), (2, 3, 5, 6, 7)),
        (dict(kernel_size=(2, 3, 1), stride=(2, 1, 2), padding=(0, 2, 1), dilation=(1, 2, 1)), (2, 3, 6, 7, 5)),
        (dict(kernel_size=2), (3, 5, 4, 4)),  # an unbatched call
    ],
)
def test_conv3d_rows_times_the_weight_is_the_convolution(kw: dict, shape: tuple) -> None:
    torch.manual_seed(0)
    layer = nn.Conv3d(3, 4, bias=False, **kw)
    x = torch.randn(*shape)
    rows = conv_rows(layer, x)
    y = layer(x if x.dim() == 5 else x.unsqueeze(0))
    want = y.permute(0, 2, 3, 4, 1).reshape(-1, 4)  # positions in (N, D', H', W') order
    assert rows.shape == (want.shape[0], layer.weight[0].numel())
    assert torch.allclose(rows @ layer.weight.flatten(1).T, want, atol=1e-5)


def _net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv3d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 8, 3, stride=2), nn.ReLU(),
        nn.ConvTranspose3d(8, 2, 2, stride=2),
    )  # fmt: skip


X = [torch.randn(2, 2, 6, 6, 6) for _ in range(2)]


def _sparsity(w: torch.Tensor) -> float:
    return float((w == 0).float().mean())


def test_magnitude_layerwise_and_global_prune_conv3d() -> None:
    for scope in ("layer", "global"):
        model = _net()
        summary = prune_unstructured_(model, amount=0.5, scope=scope)
        assert set(summary["per_layer"]) == {"0", "2"}  # the transposed conv is left dense
        total = sum(model[i].weight.numel() for i in (0, 2))
        zeros = sum(int((model[i].weight == 0).sum()) for i in (0, 2))
        assert zeros == total // 2 if scope == "global" else all(_sparsity(model[i].weight) == 0.5 for i in (0, 2))


def test_wanda_and_n_m_on_conv3d() -> None:
    model = _net()
    summary = prune_wanda_(model, X, amount=0.5)
    assert summary["per_layer"] == {"0": 0.5, "2": 0.5}
    model = _net()
    prune_n_m_(model, X, n=2, m=4)
    groups = model[2].weight.detach().flatten(1).reshape(8, -1, 4)
    assert int((groups != 0).sum(-1).max()) <= 2 and _sparsity(model[2].weight) == 0.5


def test_sparsegpt_on_conv3d_matches_the_measured_error() -> None:
    model = _net()
    reference = copy.deepcopy(model)
    x = torch.cat(X)
    summary = prune_sparsegpt_(model, X, amount=0.5)
    assert summary["per_layer"] == {"0": 0.5, "2": 0.5}
    with torch.no_grad():  # the summary's error is ||X dW^T|| / ||X W^T||: the bias is left out
        y_ref = F.conv3d(x, reference[0].weight, padding=1)
        first = float((F.conv3d(x, model[0].weight, padding=1) - y_ref).norm() / y_ref.norm())
    assert summary["errors"]["0"] == pytest.approx(first, rel=1e-3)
