"""Early exit: routing on hand-made logits, threshold extremes, expected MACs, the multi-exit loss, training."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress import data, models
from netcompress.core.errors import ConfigError
from netcompress.dynamic import (
    EarlyExitHook,
    EarlyExitModel,
    MultiExitLoss,
    add_early_exits,
    evaluate_early_exit,
    exit_path_macs,
    route_exits,
    trade_off_rows,
    train_early_exit,
)
from netcompress.evaluation import count_macs, evaluate
from netcompress.training import TrainConfig, fit

X = torch.randn(6, 1, 8, 8)
EXITS = ["features.2", "features.5"]  # after the first and second conv-BN-ReLU of digits_cnn


def _logits(probs: list[float]) -> torch.Tensor:
    """Two-class logits whose softmax is (p, 1 - p) for each sample."""
    p = torch.tensor(probs)
    return torch.stack([p.log(), (1 - p).log()], dim=1)


# 4 samples, 3 exits; entries are the top-class probability at each exit
EXIT0 = _logits([0.95, 0.6, 0.5, 0.91])
EXIT1 = _logits([0.5, 0.92, 0.7, 0.5])
EXIT2 = _logits([0.5, 0.5, 0.5, 0.5])


def _norm_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)


def _ee(threshold: float | None = None) -> tuple[nn.Module, EarlyExitModel]:
    model = models.create("digits_cnn").eval()
    ee = add_early_exits(model, exits=EXITS, example_inputs=X[:1], threshold=threshold).eval()
    return model, ee


def test_confidence_routing_picks_first_confident_exit():
    assert route_exits([EXIT0, EXIT1, EXIT2], criterion="confidence", threshold=0.9).tolist() == [0, 1, 2, 0]
    assert route_exits([EXIT0, EXIT1, EXIT2], criterion="confidence", threshold=0.93).tolist() == [0, 2, 2, 2]


def test_entropy_routing_uses_normalised_entropy():
    # normalised entropies: 0.95 -> 0.286, 0.92 -> 0.402, 0.91 -> 0.436
    assert _norm_entropy(0.92) < 0.42 < _norm_entropy(0.91)
    assert route_exits([EXIT0, EXIT1, EXIT2], criterion="entropy", threshold=0.42).tolist() == [0, 1, 2, 2]
    assert route_exits([EXIT0, EXIT1, EXIT2], criterion="entropy", threshold=0.0).tolist() == [2, 2, 2, 2]
    assert route_exits([EXIT0, EXIT1, EXIT2], criterion="entropy", threshold=1.0).tolist() == [0, 0, 0, 0]


def test_threshold_zero_exits_everything_at_first_head():
    _, ee = _ee(threshold=0.0)
    out = ee(X)
    assert ee.last_exit_counts == [6, 0, 0]
    head0 = ee.heads[0](ee.segments[0](X))
    assert (out - head0).abs().max().item() == 0.0


def test_threshold_above_one_runs_everything_and_equals_original():
    model, ee = _ee(threshold=1.01)
    out = ee(X)
    assert ee.last_exit_counts == [0, 0, 6]
    assert (out - model(X)).abs().max().item() < 1e-6
    ee.set_policy(threshold=None)
    assert (ee(X) - model(X)).abs().max().item() < 1e-6


def test_model_routing_matches_route_exits_per_sample():
    _, ee = _ee()
    torch.manual_seed(1)
    for head in ee.heads:  # sharper heads so that confidences spread across the threshold
        head.fc.weight.data.mul_(30)
    with torch.no_grad():
        all_logits = ee.forward_all(X)
    threshold = F.softmax(all_logits[0], 1).amax(1).median().item()
    expected = route_exits(all_logits, criterion="confidence", threshold=threshold)
    out = ee.set_policy(threshold=threshold)(X)
    assert ee.last_exit_index.tolist() == expected.tolist()
    assert 0 < ee.last_exit_counts[0] < 6
    chosen = torch.stack(all_logits)[expected, torch.arange(6)]
    assert (out - chosen).abs().max().item() < 1e-5


def test_input_model_untouched_and_training_returns_all_exits():
    model, ee = _ee()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ee.train()
    outs = ee(X)
    assert [tuple(o.shape) for o in outs] == [(6, 10)] * 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert ee.segments[0].get_submodule("features.0").weight is not model.features[0].weight


def test_exit_path_macs_by_hand():
    model, ee = _ee()
    full = count_macs(model, X[:1])[0]
    conv1 = 16 * 1 * 9 * 64
    conv2 = 32 * 16 * 9 * 64
    head0, head1 = 16 * 10, 32 * 10
    assert exit_path_macs(ee, X[:1]) == [conv1 + head0, conv1 + conv2 + head0 + head1, full + head0 + head1]


def test_expected_macs_equal_hand_weighted_sum():
    labels = torch.tensor([0, 0, 1, 0])
    rows = trade_off_rows(
        [EXIT0, EXIT1, EXIT2],
        labels,
        exit_macs=[100, 300, 1000],
        criterion="confidence",
        thresholds=[0.9, 1.01],
    )
    # routing [0, 1, 2, 0]: shares 1/2, 1/4, 1/4
    assert rows[0]["exit_counts"] == [2, 1, 1]
    assert rows[0]["expected_macs"] == pytest.approx(0.5 * 100 + 0.25 * 300 + 0.25 * 1000)
    assert rows[0]["macs_fraction"] == pytest.approx(375 / 1000)
    # predictions: class 0 at exits 0/1 (p > 0.5); exit 2 ties -> argmax 0; labels[2] = 1 is wrong
    assert rows[0]["accuracy"] == pytest.approx(0.75)
    assert rows[1]["expected_macs"] == pytest.approx(1000.0)


def test_evaluate_early_exit_rows_match_model_forward():
    _, ee = _ee()
    loader = [(X[:3], torch.tensor([0, 1, 2])), (X[3:], torch.tensor([3, 4, 5]))]
    rows = evaluate_early_exit(ee, loader, criterion="confidence", thresholds=[0.0, 0.2, 1.01])
    macs = exit_path_macs(ee, X[:1])
    assert rows[0]["exit_shares"] == [1.0, 0.0, 0.0] and rows[0]["expected_macs"] == macs[0]
    assert rows[2]["exit_shares"] == [0.0, 0.0, 1.0] and rows[2]["expected_macs"] == macs[2]
    ee.set_policy(threshold=0.2)
    assert rows[1]["accuracy"] == pytest.approx(evaluate(ee, loader)["accuracy"])
    assert rows[1]["exit_accuracies"][2] == pytest.approx(rows[2]["accuracy"])


def test_multi_exit_loss_is_weighted_sum_of_cross_entropies():
    targets = torch.tensor([0, 1, 0, 1])
    weights = [0.3, 0.5, 1.0]
    loss = MultiExitLoss(weights=weights)([EXIT0, EXIT1, EXIT2], targets)
    by_hand = sum(w * F.cross_entropy(lg, targets) for w, lg in zip(weights, [EXIT0, EXIT1, EXIT2]))
    assert loss.item() == pytest.approx(by_hand.item(), abs=1e-6)
    # the hook computes the same loss from the exit logits the model kept in training mode
    _, ee = _ee()
    ee.train()
    hook = EarlyExitHook(weights=weights)
    hook.epoch_start(ee, 0)
    inputs, labels = X[:4], targets
    outputs = ee(inputs)
    assert isinstance(outputs, torch.Tensor)  # fit sees the final logits: train_acc works
    hooked = hook.loss(ee, inputs, outputs, labels, torch.tensor(0.0))
    all_logits = ee.forward_all(inputs)
    expected = sum(w * F.cross_entropy(lg, labels) for w, lg in zip(weights, all_logits))
    assert hooked.item() == pytest.approx(expected.item(), abs=1e-5)
    with pytest.raises(ConfigError):
        MultiExitLoss(weights=[1.0, 1.0])([EXIT0, EXIT1, EXIT2], targets)


def _synthetic(seed: int = 0):
    bundle = data.load(
        "synthetic", num_samples=320, input_shape=(1, 8, 8), num_classes=4, seed=seed, separation=2.0
    )
    return bundle.loaders(batch_size=32, eval_batch_size=80, seed=seed)


def test_training_through_fit_learns_every_exit():
    train, test = _synthetic()
    _, ee = _ee()
    history = train_early_exit(
        ee,
        train,
        config=TrainConfig(epochs=4, lr=0.05, progress=False),
        val_loader=test,
        weights=[1.0, 1.0, 1.0],
    )
    last = history.last
    assert last["train_acc"] is not None and {"exit0_train_acc", "exit2_train_acc"} <= set(last)
    rows = evaluate_early_exit(ee, test, thresholds=[0.0, 0.9, 1.01])
    # chance is 0.25 on 4 balanced classes; over 5 seeds exit 0 (one conv + global pool) reached
    # 0.51-0.74, exit 1 0.90-0.98, the final classifier 1.0
    exit0, exit1, final = rows[0]["exit_accuracies"]
    assert exit0 > 0.4 and exit1 > 0.8 and final > 0.9
    assert last["val_acc"] == pytest.approx(rows[-1]["accuracy"])
    # at 0.9 some samples leave early: fewer MACs than the full path, accuracy above the first exit's
    assert rows[1]["expected_macs"] < rows[-1]["expected_macs"] and rows[1]["accuracy"] > rows[0]["accuracy"]
    assert ee.stash_exit_logits is False


def test_freeze_backbone_trains_heads_only():
    train, _ = _synthetic()
    _, ee = _ee()
    backbone = copy.deepcopy(ee.segments.state_dict())
    head_before = ee.heads[0].fc.weight.clone()
    train_early_exit(ee, train, config=TrainConfig(epochs=1, progress=False), freeze_backbone=True)
    assert all(torch.equal(backbone[k], v) for k, v in ee.segments.state_dict().items())  # BN stats too
    assert not torch.equal(head_before, ee.heads[0].fc.weight)
    assert all(p.requires_grad for p in ee.parameters())


def test_loss_fn_route_gives_no_train_acc():
    train, _ = _synthetic()
    _, ee = _ee()
    history = fit(ee, train, config=TrainConfig(epochs=1, progress=False), loss_fn=MultiExitLoss())
    assert history.last["train_acc"] is None and history.last["train_loss"] > 0


def test_pickle_and_deepcopy_round_trip():
    _, ee = _ee(threshold=0.5)
    ee.train()
    ee.stash_exit_logits = True
    ee(X)  # leaves stashed graph tensors behind
    for clone in (copy.deepcopy(ee), _reload(ee)):
        clone.eval()
        ee.eval()
        assert (clone(X) - ee(X)).abs().max().item() == 0.0
        assert clone.threshold == 0.5 and clone.exit_names == EXITS


def _reload(module: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_bad_exits_name_the_problem():
    model = models.create("digits_cnn")
    with pytest.raises(ConfigError, match="features.99"):
        add_early_exits(model, exits=["features.99"], example_inputs=X[:1])
    with pytest.raises(ConfigError, match="last layer"):
        add_early_exits(model, exits=["fc"], example_inputs=X[:1])
    # (a cut inside a residual block is no longer refused: tests/dynamic/test_exit_points.py)
    with pytest.raises(ConfigError, match="'features.2' lies inside exit 'features'"):
        add_early_exits(model, exits=["features", "features.2"], example_inputs=X[:1])


def test_exit_after_whole_residual_block():
    resnet = models.create("cifar_resnet20", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    ee = add_early_exits(resnet, exits=["layer1", "layer2"], example_inputs=x[:1], threshold=1.01).eval()
    assert (ee(x) - resnet(x)).abs().max().item() < 1e-5
    assert ee.heads[1].fc.in_features == 32
