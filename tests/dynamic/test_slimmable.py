"""Slimmable width: equality at width 1, extraction equality and exact sizes, training, errors, pickling."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from netcompress import data, models
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.dynamic import (
    SlimmableHook,
    SwitchableBatchNorm,
    active_channels,
    evaluate_widths,
    extract_width,
    make_slimmable,
    set_width,
    train_slimmable,
)
from netcompress.evaluation import count_macs
from netcompress.training import TrainConfig

X = torch.randn(5, 1, 8, 8)
WIDTHS = (0.25, 0.5, 0.75, 1.0)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _digits(**kw) -> nn.Module:
    model = models.create("digits_cnn", **kw)
    # non-trivial BN statistics, so a wrong slice of them would show
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_active_channels_rounds_up_without_float_noise():
    assert [active_channels(30, w) for w in (0.1, 0.25, 0.5, 1.0)] == [3, 8, 15, 30]
    assert active_channels(3, 0.1) == 1


def test_width_one_equals_original_in_eval_and_train_mode():
    model = _digits()
    slim = make_slimmable(model, widths=WIDTHS, example_inputs=X[:1]).eval()
    assert (slim(X) - model(X)).abs().max().item() == 0.0
    slim.train(), model.train()
    assert (slim(X) - model(X)).abs().max().item() < 1e-6


def test_extract_half_width_equals_slimmable_and_has_exact_size():
    model = _digits()
    slim = make_slimmable(model, widths=WIDTHS, example_inputs=X[:1]).eval()
    set_width(slim, 0.5)
    small = extract_width(slim, 0.5).eval()
    assert (small(X) - slim(X)).abs().max().item() < 1e-5
    # conv 1->8, BN 8, conv 8->16, BN 16, conv 16->32, BN 32, Linear 32->10 (+bias)
    expected = 1 * 8 * 9 + 2 * 8 + 8 * 16 * 9 + 2 * 16 + 16 * 32 * 9 + 2 * 32 + 32 * 10 + 10
    assert _params(small) == expected == 6274
    assert [type(m) for m in small.modules()].count(nn.Conv2d) == 3
    assert not any(isinstance(m, SwitchableBatchNorm) for m in small.modules())
    # MACs shrink with the width: conv MACs at 8x8 / 4x4, plus the classifier
    macs = 8 * 9 * 64 + 16 * 8 * 9 * 64 + 32 * 16 * 9 * 16 + 32 * 10
    assert count_macs(small, X[:1])[0] == count_macs(slim, X[:1])[0] == macs
    assert slim.width == 0.5  # extraction left the slimmable model as it was


def test_extract_with_flatten_of_spatial_map_and_hidden_linears():
    model = models.create("lenet", input_size=8).eval()  # flatten of 16 x 2 x 2 -> Linear(64, 120)
    slim = make_slimmable(model, widths=(0.5, 1.0), example_inputs=X[:1]).eval()
    assert (slim(X) - model(X)).abs().max().item() == 0.0
    set_width(slim, 0.5)
    small = extract_width(slim, 0.5).eval()
    assert (small(X) - slim(X)).abs().max().item() < 1e-5
    linear_shapes = [(m.in_features, m.out_features) for m in small.modules() if isinstance(m, nn.Linear)]
    assert linear_shapes == [(8 * 2 * 2, 60), (60, 42), (42, 10)]


def test_extract_from_cifar_vgg_quarter_width():
    model = models.create("cifar_vgg", cfg=[8, "M", 16], num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    slim = make_slimmable(model, widths=(0.25, 1.0), example_inputs=x[:1])
    small = extract_width(slim, 0.25).eval()
    assert (small(x) - set_width(slim, 0.25).eval()(x)).abs().max().item() < 1e-5
    assert _params(small) == 3 * 2 * 9 + 2 * 2 + 2 * 4 * 9 + 2 * 4 + 4 * 10 + 10


def test_depthwise_separable_chain_extracts_exactly():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()  # fmt: skip
    x = torch.randn(3, 3, 6, 6)
    slim = make_slimmable(model, widths=(0.5, 1.0), example_inputs=x[:1]).eval()
    assert (slim(x) - model(x)).abs().max().item() == 0.0
    small = extract_width(slim, 0.5).eval()
    assert (small(x) - set_width(slim, 0.5)(x)).abs().max().item() < 1e-5
    assert small[3].groups == small[3].in_channels == small[3].out_channels == 4
    # conv 3->4, BN 4, depthwise 4 (+bias), BN 4, pointwise 4->8, BN 8, Linear 8->5
    assert _params(small) == (3 * 4 * 9 + 4) + 8 + (4 * 9 + 4) + 8 + (4 * 8 + 8) + 16 + (8 * 5 + 5) == 269
    food = models.create("food_cnn_dws", num_classes=11).eval()
    x = torch.randn(2, 3, 32, 32)
    food_slim = make_slimmable(food, widths=(0.5, 1.0), example_inputs=x[:1]).eval()
    assert (food_slim(x) - food(x)).abs().max().item() == 0.0
    assert (extract_width(food_slim, 0.5).eval()(x) - set_width(food_slim, 0.5)(x)).abs().max().item() < 1e-5


def test_switchable_bn_keeps_private_statistics_per_width():
    slim = make_slimmable(_digits(), widths=(0.5, 1.0), example_inputs=X[:1]).train()
    bn = slim.net.features[1]
    full_before = bn.bns[1].running_mean.clone()
    set_width(slim, 0.5)(X)
    assert torch.equal(bn.bns[1].running_mean, full_before)  # the full-width BN did not see the batch
    assert not torch.equal(bn.bns[0].running_mean, full_before[:8])


class _Roll(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.roll(self.conv(x), 1, dims=1).mean((2, 3)))


class _MyConv(nn.Conv2d):
    """A subclass may compute something else: it is refused rather than sliced as a Conv2d."""


def test_unsupported_graphs_name_the_op_or_layer():
    with pytest.raises(UnsupportedModelError, match="slimmable width.*'roll'"):
        make_slimmable(_Roll(), example_inputs=torch.randn(1, 3, 5, 5))
    lstm = nn.Sequential(nn.Linear(4, 8), nn.LSTM(8, 8))
    with pytest.raises(UnsupportedModelError, match="'1' of type LSTM"):
        make_slimmable(lstm, example_inputs=torch.randn(2, 4))
    # a LayerNorm's channels are kept whole; here that leaves nothing to slim, and the error says why
    ln = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.raises(UnsupportedModelError, match="no channel group can be slimmed.*norm '1'"):
        make_slimmable(ln, example_inputs=torch.randn(1, 4))
    subclass = nn.Sequential(_MyConv(3, 8, 3), nn.Flatten(), nn.Linear(8 * 9, 2))
    with pytest.raises(UnsupportedModelError, match="layer '0' \\(_MyConv\\) sits on channels that change"):
        make_slimmable(subclass, example_inputs=torch.randn(1, 3, 5, 5))
    slim = make_slimmable(_digits(), widths=(0.5, 1.0), example_inputs=X[:1])
    with pytest.raises(ConfigError, match="0.75"):
        set_width(slim, 0.75)
    with pytest.raises(ConfigError, match="1.0"):
        make_slimmable(_digits(), widths=(0.5,), example_inputs=X[:1])
    with pytest.raises(UnsupportedModelError, match="extract_width needs a SlimmableModel"):
        extract_width(_digits(), 0.5)


def test_hook_loss_is_weighted_sum_over_widths():
    slim = make_slimmable(_digits(), widths=(0.5, 1.0), example_inputs=X[:1]).eval()
    targets = torch.tensor([0, 1, 2, 3, 4])
    hook = SlimmableHook(weights=[0.3, 1.0])
    hook.epoch_start(slim, 0)
    outputs = slim(X)
    base = nn.functional.cross_entropy(outputs, targets)
    total = hook.loss(slim, X, outputs, targets, base)
    by_hand = 1.0 * base + 0.3 * nn.functional.cross_entropy(set_width(slim, 0.5)(X), targets)
    assert total.item() == pytest.approx(by_hand.item(), abs=1e-6)
    set_width(slim, 1.0)
    assert set(hook.epoch_end(slim, 0)) == {"w0.5_train_acc", "w1_train_acc"}


def test_sandwich_rule_picks_narrowest_and_random_middle():
    slim = make_slimmable(_digits(), widths=WIDTHS, example_inputs=X[:1])
    hook = SlimmableHook(sandwich=True, num_random=1)
    picks = [hook._widths_this_batch(slim) for _ in range(20)]
    assert all(p[0] == 0.25 and len(p) == 2 and p[1] in (0.5, 0.75) for p in picks)


def test_training_learns_at_every_width():
    bundle = data.load("synthetic", num_samples=320, input_shape=(1, 8, 8), num_classes=4, separation=2.0)
    train, test = bundle.loaders(batch_size=32, eval_batch_size=80)
    slim = make_slimmable(models.create("digits_cnn"), widths=(0.25, 0.5, 1.0), example_inputs=X[:1])
    history = train_slimmable(
        slim, train, config=TrainConfig(epochs=3, lr=0.05, progress=False), val_loader=test
    )
    assert {"w0.25_train_acc", "w0.5_train_acc", "w1_train_acc"} <= set(history.last)
    rows = evaluate_widths(slim, test)
    assert [r["width"] for r in rows] == [0.25, 0.5, 1.0]
    # chance is 0.25 on 4 balanced classes
    assert all(r["accuracy"] > 0.6 for r in rows), rows
    assert rows[0]["macs"] < rows[1]["macs"] < rows[2]["macs"] == count_macs(slim, X[:1])[0]
    assert rows[2]["params"] == _params(models.create("digits_cnn"))


def test_pickle_and_deepcopy_round_trips():
    slim = make_slimmable(_digits(), widths=(0.5, 1.0), example_inputs=X[:1]).eval()
    set_width(slim, 0.5)
    small = extract_width(slim, 0.5).eval()
    for original in (slim, small):
        for clone in (copy.deepcopy(original), _reload(original)):
            assert (clone.eval()(X) - original(X)).abs().max().item() == 0.0
    assert _reload(slim).width == 0.5


def _reload(module: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_grouped_conv_group_norm_and_prelu_slice_whole_groups():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8), nn.PReLU(8), nn.Conv2d(8, 12, 3, groups=2), nn.BatchNorm2d(12),
        nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 9, 9)
    slim = make_slimmable(model, widths=(0.5, 1.0), example_inputs=x[:1]).eval()
    assert (slim(x) - model(x)).abs().max().item() == 0.0
    small = extract_width(slim, 0.5).eval()
    assert (small(x) - set_width(slim, 0.5)(x)).abs().max().item() < 1e-5
    assert (small[1].num_groups, small[3].groups, small[3].out_channels, small[6].groups) == (2, 2, 6, 6)
    # conv 3->4 (+bias), GN 4, PReLU 4, grouped conv 4->6 in 2 groups (+bias), BN 6, depthwise 6, Linear 6->3
    assert _params(small) == (3 * 4 * 9 + 4) + 8 + 4 + (6 * 2 * 9 + 6) + 12 + (6 * 9 + 6) + (6 * 3 + 3) == 331


class _DictOutput(nn.Module):
    """A model that returns its logits in a dict, as Hugging Face classifiers do (a ModelOutput)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = models.create("digits_cnn")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


def test_sandwich_training_of_a_model_with_dict_outputs():
    torch.manual_seed(0)
    slim = make_slimmable(_DictOutput(), widths=(0.25, 0.5, 1.0), example_inputs=X[:1])
    before = copy.deepcopy(slim.state_dict())
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(2)]
    hook = SlimmableHook(sandwich=True, num_random=1)
    history = train_slimmable(slim, batches, config=TrainConfig(epochs=1, lr=0.05, progress=False), hook=hook)
    assert {"w0.25_train_acc", "w1_train_acc"} <= set(history.last)
    changed = [k for k, v in slim.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed
    small = extract_width(slim, 0.5).eval()
    set_width(slim.eval(), 0.5)
    torch.testing.assert_close(small(X)["logits"], slim(X)["logits"], rtol=1e-5, atol=1e-5)
