"""Zero Time Waste: cascade heads read the previous head's logits, the exit ensemble is the weighted geometric
mean exactly as defined, fitting it lowers the training NLL, routing in PyTorch equals the offline routing of the
ensemble's logits, and the per-segment ONNX files (state + carried logits) match PyTorch per exit in ORT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netcompress import models
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.dynamic import (
    CascadeHead,
    ExitEnsemble,
    add_early_exits,
    attach_exit_ensemble,
    exit_path_macs,
    fit_exit_ensemble,
    route_exits,
)

X = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(1))
EXITS = ["layer1.0.conv1", "layer2", "layer3.0"]


def _ztw(*, ensemble: bool = True, include_final: bool = True):
    torch.manual_seed(0)
    resnet = models.create("cifar_resnet20", num_classes=10).eval()
    ee = add_early_exits(resnet, exits=EXITS, example_inputs=X[:1], cascade=True).eval()
    gen = torch.Generator().manual_seed(2)
    for head in ee.heads:
        base = head.base if isinstance(head, CascadeHead) else head
        base.fc.weight.data.mul_(40)
        if isinstance(head, CascadeHead):
            head.previous.weight.data = torch.randn(10, 10, generator=gen)
    if ensemble:
        ens = ExitEnsemble(num_exits=4, num_classes=10, include_final=include_final)
        with torch.no_grad():
            ens.weight.copy_(torch.rand(4, 4, generator=gen) * 2)
            ens.log_prior.copy_(torch.randn(4, 10, generator=gen))
        ee.exit_ensemble = ens
    return ee


def test_cascade_head_adds_the_previous_probabilities_through_its_matrix():
    ee = _ztw(ensemble=False)
    assert [isinstance(h, CascadeHead) for h in ee.heads] == [False, True, True]
    with torch.no_grad():
        raw = ee.forward_all(X, raw=True)
        s0 = ee.run_segment(0, (X,))
        s1 = ee.run_segment(1, s0)
        head = ee.heads[1]
        expected = head.base(s1[0]) + F.softmax(raw[0], dim=1) @ head.previous.weight.T
    assert torch.allclose(raw[1], expected, atol=1e-5)
    assert (raw[1] - head.base(s1[0])).abs().max() > 0.3  # the cascade term is not negligible here
    # a fresh cascade head starts as its base head (zero matrix)
    fresh = add_early_exits(models.create("cifar_resnet20").eval(), exits=EXITS, example_inputs=X[:1], cascade=True)
    assert float(fresh.heads[2].previous.weight.detach().abs().sum()) == 0.0


def test_ensemble_is_the_weighted_geometric_mean_of_the_exits_so_far():
    ee = _ztw()
    ens = ee.exit_ensemble
    with torch.no_grad():
        raw = ee.forward_all(X, raw=True)
        decided = ee.forward_all(X)
    for m in range(4):
        # p_m(y) = b_m(y) prod_i q_i(y)^{w_mi} / Z, computed here in probability space
        prod = torch.exp(ens.log_prior[m]).expand(len(X), 10).clone()
        for i in range(m + 1):
            prod = prod * F.softmax(raw[i], dim=1) ** ens.weight[m, i]
        expected = prod / prod.sum(dim=1, keepdim=True)
        assert torch.allclose(F.softmax(decided[m], dim=1), expected.float(), atol=1e-5), m
    # without the final exit in the ensemble, the last exit answers with the unmodified model's logits
    plain = _ztw(include_final=False)
    with torch.no_grad():
        assert torch.equal(plain.forward_all(X)[-1], plain.forward_all(X, raw=True)[-1])
        assert torch.equal(plain(X), plain.forward_all(X, raw=True)[-1])
        assert torch.allclose(ee(X), decided[-1])  # no threshold: the final exit's decision logits


def test_fit_lowers_the_nll_keeps_weights_nonnegative_and_refuses_bad_shapes():
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 5, (400,), generator=gen)
    # three noisy "exits" that each see the label with some noise: the ensemble beats each alone
    exits = [F.one_hot(labels, 5).float() * s + torch.randn(400, 5, generator=gen) for s in (1.0, 1.5, 2.0)]
    ens = fit_exit_ensemble(exits, labels, steps=200)
    assert (ens.weight >= 0).all()
    assert float(ens.weight.triu(1).abs().sum()) == 0.0  # exit m reads only exits 0..m
    for m in range(3):
        alone = F.cross_entropy(exits[m], labels)
        combined = F.cross_entropy(ens(m, exits[: m + 1]), labels)
        # exit 0 alone: only a temperature and a prior to fit; later exits gain from their predecessors
        assert combined < alone - (0.03 if m else 0.0), m
    assert not ens.include_final or fit_exit_ensemble(exits, labels, include_final=False, steps=5).weight[2, 2] == 1
    with pytest.raises(ConfigError):
        fit_exit_ensemble([], labels)
    with pytest.raises(Exception, match="labels"):
        fit_exit_ensemble([exits[0], exits[1][:10]], labels)


def test_batched_routing_equals_offline_routing_of_the_ensemble_logits():
    ee = _ztw()
    with torch.no_grad():
        decided = ee.forward_all(X)
    scores = torch.cat([F.softmax(lg, 1).amax(1) for lg in decided[:3]])
    threshold = float(scores.median())
    ee.set_policy(threshold=threshold)
    with torch.no_grad():
        out = ee(X)
    chosen = route_exits(decided, threshold=threshold)
    assert ee.last_exit_index.tolist() == chosen.tolist()
    assert 0 < int((chosen < 3).sum()) < len(X)  # some leave early, some do not
    expected = torch.stack(decided)[chosen, torch.arange(len(X))]
    assert torch.allclose(out, expected, atol=1e-5)


def test_path_macs_count_the_cascade_matrices():
    plain = add_early_exits(models.create("cifar_resnet20").eval(), exits=EXITS, example_inputs=X[:1])
    ztw = _ztw()
    extra = [a - b for a, b in zip(exit_path_macs(ztw, X[:1]), exit_path_macs(plain, X[:1]))]
    assert extra == [0, 100, 200, 200]  # one 10 x 10 matrix per cascade head on the way


def test_gates_are_refused_on_a_model_whose_exits_carry_logits():
    from netcompress.dynamic import ExitGates

    with pytest.raises(UnsupportedModelError, match="cascade"):
        _ztw().set_gate(ExitGates(num_heads=3), [0.5, 0.5, 0.5])


def test_attach_fits_on_the_loaders_raw_logits():
    ee = _ztw(ensemble=False)
    loader = [(X[:12], torch.arange(12) % 10), (X[12:], torch.arange(12) % 10)]
    ens = attach_exit_ensemble(ee, loader, include_final=False)
    assert ee.exit_ensemble is ens and not ens.include_final
    assert (ens.weight >= 0).all()


def test_per_segment_onnx_carries_the_logits_and_matches_pytorch_per_exit(tmp_path):
    pytest.importorskip("onnxruntime")
    from netcompress.dynamic import OrtEarlyExit, export_early_exit_onnx

    ee = _ztw()
    with torch.no_grad():
        decided = ee.forward_all(X)
    scores = torch.cat([F.softmax(lg, 1).amax(1) for lg in decided[:3]]).sort().values
    gaps, lo = scores.diff(), len(scores) // 4
    i = int(gaps[lo : 3 * lo].argmax()) + lo  # a threshold far from every score: ORT's rounding cannot flip one
    assert gaps[i] > 1e-3
    ee.set_policy(threshold=float(scores[i] + scores[i + 1]) / 2)
    summary = export_early_exit_onnx(ee, tmp_path, X[:1])
    assert summary["segments"][1]["inputs"] == ["in0", "in1", "carry_in0"]
    assert summary["segments"][2]["outputs"] == ["logits", "out0", "carry_out0", "carry_out1", "carry_out2"]
    assert all(row["max_rel_diff"] < 1e-4 for row in summary["check"])
    runner = OrtEarlyExit(tmp_path)
    for ref, got in zip(decided, runner.forward_all(X)):
        assert (ref - got).abs().max().item() < 1e-4
    with torch.no_grad():
        expected = ee(X)
    got = runner(X)
    assert runner.last_exit_index.tolist() == ee.last_exit_index.tolist()
    assert (got - expected).abs().max().item() < 1e-4


def test_stronger_heads_compute_what_they_say_and_cost_what_they_say():
    from netcompress.dynamic.exit_heads import HEADS

    torch.manual_seed(0)
    x = torch.randn(2, 16, 32, 32)
    grid2 = HEADS.get("pool_grid2_linear")(in_channels=16, num_classes=10)
    assert torch.allclose(grid2(x), grid2.fc(F.avg_pool2d(x, 16).flatten(1)), atol=1e-5)
    conv = HEADS.get("pool_conv_grid_linear")(in_channels=16, num_classes=10).eval()
    with torch.no_grad():
        conv.bn.running_mean.uniform_(-1, 1)
        conv.bn.running_var.uniform_(0.5, 2)
        hidden = F.relu(conv.bn(conv.conv(F.avg_pool2d(x, 4))))
        assert torch.allclose(conv(x), conv.fc(F.avg_pool2d(hidden, 2).flatten(1)), atol=1e-5)
    resnet = models.create("cifar_resnet20").eval()
    plain = add_early_exits(resnet, exits=["layer1.0"], example_inputs=X[:1], head="pool_grid_linear")
    strong = add_early_exits(resnet, exits=["layer1.0"], example_inputs=X[:1], head="pool_conv_grid_linear")
    # X is 16 x 16: layer1.0's 16 channels pool to 8 x 8, a 16 -> 32 1x1 conv, then 32 * 16 -> 10
    extra = 64 * 16 * 32 + 32 * 16 * 10 - 16 * 16 * 10
    assert exit_path_macs(strong, X[:1])[0] - exit_path_macs(plain, X[:1])[0] == extra


def test_method_trains_cascade_heads_fits_the_ensemble_and_calibrates_on_it():
    from netcompress import data
    from netcompress.dynamic import collect_exit_logits, with_early_exits
    from netcompress.evaluation import evaluate

    bundle = data.load("synthetic", num_samples=160, input_shape=(1, 8, 8), num_classes=4, separation=2.0)
    train, val = bundle.loaders(batch_size=32, eval_batch_size=40)
    torch.manual_seed(0)
    ee, summary = with_early_exits(
        models.create("digits_cnn", num_classes=4), train, val_loader=val, example_inputs=torch.randn(2, 1, 8, 8),
        exits=["features.2", "features.5"], epochs=1, progress=False, max_accuracy_drop=0.02,
        per_exit_thresholds=True, cascade=True, ensemble=True, ensemble_final=False,
    )  # fmt: skip
    assert isinstance(ee.heads[1], CascadeHead) and ee.exit_ensemble is not None
    assert not ee.exit_ensemble.include_final and float(ee.exit_ensemble.weight[1, 0]) >= 0
    decided, labels = collect_exit_logits(ee, val)
    raw, _ = collect_exit_logits(ee, val, raw=True)
    assert not torch.allclose(decided[1], raw[1])  # the exits decide by the ensemble
    calibration = summary["calibration"]
    assert evaluate(ee, val)["accuracy"] == pytest.approx(calibration["accuracy"])
    assert calibration["accuracy"] >= calibration["final_accuracy"] - 0.02


def test_grid_average_equals_adaptive_pooling_where_the_grid_divides_and_falls_back_elsewhere():
    from netcompress.dynamic.exit_heads import grid_average

    gen = torch.Generator().manual_seed(5)
    cases = [((3, 4, 32, 32), 4), ((3, 4, 8, 8), 2), ((3, 4, 10, 6), 4), ((3, 4, 6, 6), 4), ((3, 4, 4, 4), 4)]
    # from MATMUL_POOL_ROWS (N * C * H) rows on, two matrix products (square and non-square maps)
    cases += [((8, 16, 32, 32), 8), ((16, 32, 16, 8), 4), ((64, 32, 8, 8), 4)]
    for shape, grid in cases:
        x = torch.randn(shape, generator=gen)
        assert torch.allclose(grid_average(x, grid), F.adaptive_avg_pool2d(x, grid), atol=1e-6), shape
