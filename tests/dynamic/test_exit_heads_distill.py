"""The grid-pool exit head (Shallow-Deep Networks) and exits distilled from a teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netcompress import models
from netcompress.dynamic import EarlyExitHook, add_early_exits, exit_path_macs, train_early_exit
from netcompress.dynamic.exit_heads import HEADS, PoolGridLinearHead
from netcompress.training import TrainConfig

X = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def test_grid_head_is_grid_average_pool_then_linear():
    torch.manual_seed(0)
    head = HEADS.get("pool_grid_linear")(in_channels=5, num_classes=3)
    assert isinstance(head, PoolGridLinearHead) and head.fc.in_features == 5 * 16 and head.mix is None
    x = torch.randn(2, 5, 8, 8)
    assert torch.allclose(head(x), head.fc(F.avg_pool2d(x, 2).flatten(1)), atol=1e-6)
    # a sequence (N, C, L) pools to grid**2 steps, a vector (N, C) is repeated to that size
    seq = torch.randn(2, 5, 32)
    assert torch.allclose(head(seq), head.fc(F.avg_pool1d(seq, 2).flatten(1)), atol=1e-6)
    vec = torch.randn(2, 5)
    assert torch.allclose(head(vec), head.fc(vec.repeat_interleave(16, dim=1)), atol=1e-6)


def test_mixed_grid_head_is_half_max_half_average_at_start():
    torch.manual_seed(0)
    head = HEADS.get("pool_grid_mix_linear")(in_channels=5, num_classes=3)
    x = torch.randn(2, 5, 8, 8)
    by_hand = head.fc((0.5 * F.max_pool2d(x, 2) + 0.5 * F.avg_pool2d(x, 2)).flatten(1))
    assert torch.allclose(head(x), by_hand, atol=1e-6)
    with torch.no_grad():
        head.mix.fill_(30.0)  # sigmoid(30) = 1 in float32: max pooling only
    assert torch.allclose(head(x), head.fc(F.max_pool2d(x, 2).flatten(1)), atol=1e-6)
    seq = torch.randn(2, 5, 32)
    assert torch.allclose(head(seq), head.fc(F.max_pool1d(seq, 2).flatten(1)), atol=1e-6)


def test_grid_head_on_resnet_exits_costs_its_linear_only():
    torch.manual_seed(0)
    resnet = models.create("cifar_resnet20", num_classes=10).eval()
    linear = add_early_exits(resnet, exits=["layer1.0", "layer2.1"], example_inputs=X[:1])
    grid = add_early_exits(
        resnet, exits=["layer1.0", "layer2.1"], example_inputs=X[:1], head="pool_grid_linear"
    )
    # the heads differ by their Linear: 16 and 32 channels, 16 grid cells each, 10 classes
    extra = [16 * 16 * 10 - 16 * 10, 32 * 16 * 10 - 32 * 10]
    lin, grd = exit_path_macs(linear, X[:1]), exit_path_macs(grid, X[:1])
    assert [g - v for g, v in zip(grd, lin)] == [extra[0], extra[0] + extra[1], extra[0] + extra[1]]
    assert [tuple(o.shape) for o in grid.train()(X)] == [(6, 10)] * 3


def _ee():
    torch.manual_seed(0)
    resnet = models.create("cifar_resnet20", num_classes=10).eval()
    ee = add_early_exits(
        resnet, exits=["layer1.1", "layer2.0"], example_inputs=X[:1], head="pool_grid_linear"
    )
    return resnet, ee


def test_teacher_distils_every_exit():
    teacher, ee = _ee()
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    weights = [0.5, 0.7, 1.0]
    hook = EarlyExitHook(weights=weights, teacher=teacher, temperature=3.0, alpha=0.25)
    ee.train()
    hook.epoch_start(ee, 0)
    outputs = ee(X)
    loss = hook.loss(ee, X, outputs, targets, torch.tensor(0.0))
    with torch.no_grad():
        t = teacher.eval()(X)
    by_hand = 0.0
    for w, lg in zip(weights, ee.forward_all(X)):
        soft = F.kl_div(F.log_softmax(lg / 3, 1), F.softmax(t / 3, 1), reduction="batchmean") * 9
        by_hand = by_hand + w * (0.25 * soft + 0.75 * F.cross_entropy(lg, targets))
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # alpha 0: exactly the plain multi-exit cross entropy
    plain = EarlyExitHook(weights=weights, teacher=teacher, alpha=0.0)
    plain.epoch_start(ee, 0)
    ee(X)
    expected = sum(w * F.cross_entropy(lg, targets) for w, lg in zip(weights, ee.forward_all(X)))
    assert plain.loss(ee, X, None, targets, torch.tensor(0.0)).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_joint_training_with_a_teacher_leaves_the_teacher_untouched():
    teacher, ee = _ee()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loader = [(X, torch.tensor([0, 1, 2, 3, 4, 5]))] * 2
    history = train_early_exit(
        ee, loader, config=TrainConfig(epochs=1, lr=0.01, progress=False), teacher=teacher, alpha=0.5
    )
    assert history.last["train_loss"] > 0 and "exit2_train_acc" in history.last
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN statistics too
    assert not teacher.training and ee.stash_exit_logits is False


def test_grid_heads_export_to_onnx_runtime_per_exit(tmp_path):
    pytest.importorskip("onnxruntime")
    from netcompress.dynamic import OrtEarlyExit, export_early_exit_onnx

    _, ee = _ee()
    ee.eval().set_policy(threshold=1.01)  # nobody leaves early: the ORT runner must give the final logits
    summary = export_early_exit_onnx(ee, tmp_path, X[:1])
    assert all(row["max_rel_diff"] < 1e-4 for row in summary["check"])
    runner = OrtEarlyExit(tmp_path)
    with torch.no_grad():
        expected = ee(X)
    assert (runner(X) - expected).abs().max().item() < 1e-4 and runner.last_exit_counts == [0, 0, 6]
