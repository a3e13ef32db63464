"""One head kind per exit (a cheap head where every later sample pays for it, a conv head later) and the
``pool_grid_conv_linear`` head (the 1x1 conv on the pooled grid): each exit gets the kind named for it, the head
computes what it says and costs the MACs it says, batched routing equals the offline routing of the exit logits,
and the per-segment ONNX files (plain and BN-folded) match PyTorch per exit in ORT and route alike."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netcompress import models
from netcompress.core.errors import ConfigError
from netcompress.dynamic import CascadeHead, ExitEnsemble, add_early_exits, exit_path_macs, route_exits
from netcompress.dynamic.exit_folding import fold_early_exit_bn
from netcompress.dynamic.exit_heads import (
    HEADS,
    PoolConvGridLinearHead,
    PoolGridConvLinearHead,
    PoolLinearHead,
)
from tests.exit_checks import assert_ort_runs_like_pytorch, randomise_bn_

X = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(6))
EXITS = ["layer1.1", "layer2.0", "layer3.0"]  # maps 16 x 32 x 32, 32 x 16 x 16, 64 x 8 x 8
KINDS = ["pool_linear", "pool_conv_grid_linear", "pool_grid_conv_linear"]


def _mixed(*, cascade: bool = True, ensemble: bool = True):
    """ResNet-20 with one head kind per exit, every BN with non-trivial statistics, sharp heads, and (with
    ``ensemble``) a ZTW exit ensemble, routed at per-exit thresholds far from every exit's scores."""
    torch.manual_seed(0)
    resnet = models.create("cifar_resnet20", num_classes=10).eval()
    ee = add_early_exits(resnet, exits=EXITS, example_inputs=X[:1], head=KINDS, cascade=cascade)
    gen = torch.Generator().manual_seed(9)
    randomise_bn_(ee, gen)
    for head in ee.heads:
        getattr(head, "base", head).fc.weight.data.mul_(10)
        if isinstance(head, CascadeHead):
            head.previous.weight.data = torch.randn(10, 10, generator=gen)
    if ensemble:
        ens = ExitEnsemble(num_exits=4, num_classes=10)
        with torch.no_grad():
            ens.weight.copy_(torch.rand(4, 4, generator=gen) * 2)
            ens.log_prior.copy_(torch.randn(4, 10, generator=gen))
        ee.exit_ensemble = ens
    ee.eval()
    with torch.no_grad():
        decided = ee.forward_all(X)
    thresholds = []
    for logits in decided[:3]:  # per exit: in the widest gap of its middle scores, so samples leave at every exit
        scores = F.softmax(logits, 1).amax(1).sort().values
        gaps, lo = scores.diff(), len(scores) // 4
        i = int(gaps[lo : 3 * lo].argmax()) + lo
        assert gaps[i] > 1e-3  # far from every score: float rounding cannot flip an exit
        thresholds.append(float(scores[i] + scores[i + 1]) / 2)
    return ee.set_policy(threshold=thresholds)


def test_each_exit_gets_the_head_kind_named_for_it_in_the_order_of_exits():
    ee = _mixed(ensemble=False)
    bases = [getattr(h, "base", h) for h in ee.heads]
    assert [type(b) for b in bases] == [PoolLinearHead, PoolConvGridLinearHead, PoolGridConvLinearHead]
    assert [b.fc.in_features for b in bases] == [16, 64 * 16, 128 * 16]
    # exits named out of execution order: the kinds follow the names, the heads the execution order
    resnet = models.create("cifar_resnet20").eval()
    ee = add_early_exits(resnet, exits=["layer3.0", "layer1.1"], example_inputs=X[:1],
                         head=["pool_grid_conv_linear", "pool_linear"])  # fmt: skip
    assert ee.exit_names == ["layer1.1", "layer3.0"]
    assert [type(h) for h in ee.heads] == [PoolLinearHead, PoolGridConvLinearHead]
    # one name still means every exit
    same = add_early_exits(resnet, exits=EXITS, example_inputs=X[:1], head="pool_grid_conv_linear")
    assert all(type(h) is PoolGridConvLinearHead for h in same.heads)


def test_bad_head_lists_are_refused_by_name():
    resnet = models.create("cifar_resnet20").eval()
    with pytest.raises(ConfigError, match="2 kinds for 3 exits"):
        add_early_exits(resnet, exits=EXITS, example_inputs=X[:1], head=["pool_linear", "pool_linear"])
    with pytest.raises(ConfigError, match="no_such_head"):
        add_early_exits(resnet, exits=EXITS, example_inputs=X[:1], head=["pool_linear", "no_such_head", "pool_linear"])
    with pytest.raises(ConfigError, match="one head name per exit"):
        add_early_exits(resnet, exits=EXITS, example_inputs=X[:1], head=["pool_linear", 3, "pool_linear"])


def test_grid_conv_head_computes_what_it_says_and_costs_a_quarter_of_the_conv_heads_conv():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 32, 32)
    head = PoolGridConvLinearHead(in_channels=16, num_classes=10).eval()
    with torch.no_grad():
        head.bn.running_mean.uniform_(-1, 1)
        head.bn.running_var.uniform_(0.5, 2)
        hidden = F.relu(head.bn(head.conv(F.avg_pool2d(x, 8))))  # 32 x 32 -> 4 x 4, then 16 -> 32 channels
        assert torch.allclose(head(x), head.fc(hidden.flatten(1)), atol=1e-5)
        assert torch.allclose(head.features(x), hidden.flatten(1), atol=1e-6)
    wide = HEADS.get("pool_grid_conv4_linear")(in_channels=16, num_classes=10)
    assert (wide.conv.out_channels, wide.fc.in_features) == (64, 64 * 16)
    resnet = models.create("cifar_resnet20").eval()
    plain = add_early_exits(resnet, exits=["layer1.0"], example_inputs=X[:1], head="pool_grid_linear")
    grid_conv = add_early_exits(resnet, exits=["layer1.0"], example_inputs=X[:1], head="pool_grid_conv_linear")
    conv_grid = add_early_exits(resnet, exits=["layer1.0"], example_inputs=X[:1], head="pool_conv_grid_linear")
    base = exit_path_macs(plain, X[:1])[0] - 16 * 16 * 10
    # the 16 -> 32 1x1 conv at 4 x 4 positions (the conv head runs it at 8 x 8), then 32 * 16 -> 10
    assert exit_path_macs(grid_conv, X[:1])[0] - base == 16 * 16 * 32 + 32 * 16 * 10
    assert exit_path_macs(conv_grid, X[:1])[0] - base == 64 * 16 * 32 + 32 * 16 * 10


def test_batched_routing_with_mixed_heads_equals_the_offline_routing_of_the_exit_logits():
    ee = _mixed()
    with torch.no_grad():
        decided = ee.forward_all(X)
        out = ee(X)
    chosen = route_exits(decided, threshold=ee.threshold)
    assert ee.last_exit_index.tolist() == chosen.tolist()
    assert len(set(chosen.tolist())) >= 3  # samples leave at several exits, cheap and conv heads alike
    expected = torch.stack(decided)[chosen, torch.arange(len(X))]
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("folded", [False, True])
def test_mixed_heads_per_segment_onnx_match_pytorch_per_exit_and_route_alike(tmp_path, folded):
    pytest.importorskip("onnxruntime")
    ee = _mixed()
    if folded:
        ee, report = fold_early_exit_bn(ee, X[:1])
        assert report["bn_left"] == [] and report["num_folded"] == 21 + 2  # backbone + the two conv heads
    assert_ort_runs_like_pytorch(ee, tmp_path, X)
