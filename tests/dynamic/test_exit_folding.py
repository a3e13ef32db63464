"""BatchNorm folded into an early-exit model (the deployed form): every BN of the segments and of the conv
heads is gone, the routed model computes what the unfolded one does (same exits, logits within float
rounding), the original is untouched, and the folded model's per-segment ONNX files match it per exit in ORT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress import models
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.dynamic import ExitEnsemble, add_early_exits
from netcompress.dynamic.exit_folding import fold_early_exit_bn
from tests.exit_checks import assert_ort_runs_like_pytorch, randomise_bn_

X = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(3))
EXITS = ["layer1.0", "layer1.2", "layer2.1"]  # the conv head pools to 8 x 8: maps of at least that (16 x 16 input)


def _bns(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _ztw_conv_heads():
    """ResNet-20 with pool_conv_grid_linear cascade heads and an exit ensemble; every BN with non-trivial
    statistics and affine parameters (a fresh BN folds to the identity and would prove nothing)."""
    torch.manual_seed(0)
    resnet = models.create("cifar_resnet20", num_classes=10).eval()
    ee = add_early_exits(resnet, exits=EXITS, example_inputs=X[:1], head="pool_conv_grid_linear", cascade=True)
    gen = torch.Generator().manual_seed(4)
    randomise_bn_(ee, gen)
    for head in ee.heads:
        base = getattr(head, "base", head)
        base.fc.weight.data.mul_(30)
        if hasattr(head, "previous"):
            head.previous.weight.data = torch.randn(10, 10, generator=gen)
    ens = ExitEnsemble(num_exits=4, num_classes=10)
    with torch.no_grad():
        ens.weight.copy_(torch.rand(4, 4, generator=gen) * 2)
        ens.log_prior.copy_(torch.randn(4, 10, generator=gen))
    ee.exit_ensemble = ens
    ee.eval()
    with torch.no_grad():
        decided = ee.forward_all(X)
    scores = torch.cat([F.softmax(lg, 1).amax(1) for lg in decided[:3]]).sort().values
    gaps, lo = scores.diff(), len(scores) // 4
    i = int(gaps[lo : 3 * lo].argmax()) + lo  # a threshold far from every score: rounding cannot flip one
    assert gaps[i] > 1e-3
    return ee.set_policy(threshold=float(scores[i] + scores[i + 1]) / 2)


def test_folded_routed_model_equals_the_unfolded_one_and_holds_no_batchnorm():
    ee = _ztw_conv_heads()
    before = {k: v.clone() for k, v in ee.state_dict().items()}
    folded, summary = fold_early_exit_bn(ee, X[:1])
    # ResNet-20: stem + 18 block convs + the 2 downsampling shortcut convs; one 1x1 conv per head
    assert summary["num_folded"] == 21 + 3 and summary["bn_left"] == []
    assert _bns(folded) == [] and len(_bns(ee)) == 24
    assert [type(h) for h in folded.heads] == [type(h) for h in ee.heads]  # heads keep class and methods
    assert all(torch.equal(v, ee.state_dict()[k]) for k, v in before.items())  # the original untouched
    with torch.no_grad():
        reference, got = ee.forward_all(X), folded.forward_all(X)
        for ref, out in zip(reference, got):
            assert (ref - out).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
        out, expected = folded(X), ee(X)
    assert folded.last_exit_index.tolist() == ee.last_exit_index.tolist()
    assert 0 < int((ee.last_exit_index < 3).sum()) < len(X)  # samples leave at several exits
    assert (out - expected).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())
    # the BNs really did something: the folded weights moved (a no-op fold would prove nothing)
    moved = (folded.segments[0].get_submodule("conv1").weight - ee.segments[0].get_submodule("conv1").weight)
    assert moved.abs().max() > 0.05
    assert folded.heads[1].base.conv.bias is not None and ee.heads[1].base.conv.bias is None


def test_folded_model_per_segment_onnx_matches_pytorch_per_exit_and_routes_alike(tmp_path):
    pytest.importorskip("onnxruntime")
    folded, _ = fold_early_exit_bn(_ztw_conv_heads(), X[:1])
    summary = assert_ort_runs_like_pytorch(folded, tmp_path, X)
    assert all("BatchNormalization" not in f["op_counts"] for f in summary["segments"])


def test_bad_inputs_are_refused_by_name():
    ee = _ztw_conv_heads()
    with pytest.raises(ConfigError, match="one tensor"):
        fold_early_exit_bn(ee, [X[:1]])
    with pytest.raises(UnsupportedModelError, match="EarlyExitModel"):
        fold_early_exit_bn(models.create("cifar_resnet20"), X[:1])
