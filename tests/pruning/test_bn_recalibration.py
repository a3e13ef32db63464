"""recalibrate_bn: BatchNorm running statistics re-estimated after pruning, weights untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress.pruning  # noqa: F401  (registers the methods)
from netcompress.core.errors import DataError
from netcompress.pruning import prune_channels, recalibrate_bn


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=0.3), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip


def batches(count: int, size: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (2.0 + 3.0 * torch.randn(size, 3, 6, 6, generator=gen), torch.randint(0, 4, (size,), generator=gen))
        for _ in range(count)
    ]


def test_running_stats_are_the_cumulative_batch_average_and_weights_unchanged() -> None:
    model = net()
    model[1].running_mean.fill_(5.0)  # stale statistics, as after channel removal
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_b" not in k}
    data = batches(4)
    summary = recalibrate_bn(model, data, num_batches=3)
    assert summary == {"bn_layers": 2, "batches": 3, "samples": 18}
    # the first BN sees the conv output directly: its running mean is the mean of the 3 per-batch means
    # (cumulative average, equal batch sizes), its running var the mean of the unbiased per-batch variances
    with torch.no_grad():
        outs = [model[0](x) for x, _ in data[:3]]
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    variances = torch.stack([o.transpose(0, 1).reshape(8, -1).var(dim=1) for o in outs]).mean(0)
    assert (model[1].running_mean - means).abs().max() < 1e-5
    assert (model[1].running_var - variances).abs().max() < 1e-4
    assert int(model[1].num_batches_tracked) == 3
    after = {k: v for k, v in model.state_dict().items() if k in weights}
    assert all(torch.equal(after[k], weights[k]) for k in weights)
    # momentum and the training flags come back as they were
    assert model[1].momentum == 0.3 and model[4].momentum == 0.1
    assert not any(m.training for m in model.modules())


def test_training_flags_are_restored_per_module() -> None:
    model = net().train()
    model[6].eval()  # a frozen dropout inside a training model stays frozen
    recalibrate_bn(model, batches(2), num_batches=5)
    assert model.training and model[1].training and not model[6].training


def test_recalibration_restores_accuracy_after_channel_removal() -> None:
    model = net()
    data = batches(3, size=32)
    # statistics of the full model on this data, then prune: the pruned model's stats are stale
    recalibrate_bn(model, data, num_batches=3)
    small = prune_channels(model, data[0][0], ratio=0.5, importance="l1")
    x = data[0][0]
    small.train()
    small[6].eval()  # no dropout noise in the reference output
    with torch.no_grad():
        batch_stats_out = small(x)  # train mode: normalised with this batch's own statistics
    small.eval()
    with torch.no_grad():
        stale = (small(x) - batch_stats_out).abs().max()
    recalibrate_bn(small, [(x, None)], num_batches=1)
    with torch.no_grad():
        recalibrated_out = small(x)
    # after recalibration on exactly this batch the eval output equals the train-mode output up to the
    # biased/unbiased variance factor (n = 32*36 values per channel): tiny
    assert (recalibrated_out - batch_stats_out).abs().max() < 2e-3
    assert stale > 0.05  # the statistics of the unpruned model were measurably wrong


def test_empty_loader_is_an_error_and_leaves_the_statistics() -> None:
    model = net()
    model[1].running_mean.fill_(5.0)
    with pytest.raises(DataError, match="no batches"):
        recalibrate_bn(model, [], num_batches=3)
    assert torch.equal(model[1].running_mean, torch.full((8,), 5.0))
    assert model[1].momentum == 0.3


def test_model_without_batchnorm_is_a_no_op() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    assert recalibrate_bn(model, batches(1), num_batches=1) == {"bn_layers": 0, "batches": 0, "samples": 0}


def test_bad_num_batches_is_a_config_error() -> None:
    with pytest.raises(Exception, match="num_batches"):
        recalibrate_bn(net(), batches(1), num_batches=0)


def _context(tmp_path, data):
    from netcompress.core.methods import MethodData

    return MethodData(
        train_loader=data, val_loader=data, example_inputs=data[0][0][:2], out_dir=tmp_path, num_classes=4, progress=False,
    )  # fmt: skip


@pytest.mark.parametrize("batches_", [0, 2])
def test_channel_and_auto_steps_recalibrate_after_the_prune(tmp_path, batches_: int) -> None:
    import json

    from netcompress.core.methods import METHODS

    data = batches(3, size=16)
    for key, params in [("prune/channel", {"ratio": 0.5}), ("prune/auto", {"reduction": 2.0})]:
        spec = METHODS.get(key)
        config = spec.config.from_dict({**params, "recalibrate_bn_batches": batches_}, where=key)
        model = net()
        result = spec.fn(model, config, _context(tmp_path, data))
        recal = json.loads(json.dumps(result.summary["bn_recalibration"]))
        assert recal["batches"] == batches_
        small_bn = result.model[1]
        if batches_:
            # cumulative average over the 2 batches fed: running mean = mean of the per-batch means
            with torch.no_grad():
                outs = [result.model[0](x) for x, _ in data[:2]]
            means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
            assert (small_bn.running_mean - means).abs().max() < 1e-5
            assert recal["samples"] == 32 and 0.0 <= recal["accuracy_recalibrated"] <= 1.0
        else:
            assert torch.count_nonzero(small_bn.running_mean) == 0  # fresh BN of net(): untouched
        assert torch.count_nonzero(model[1].running_mean) == 0  # the input model is never modified


def test_step_config_rejects_negative_batches() -> None:
    from netcompress.core.errors import ConfigError
    from netcompress.core.methods import METHODS

    with pytest.raises(ConfigError, match="recalibrate_bn_batches"):
        METHODS.get("prune/slimming").config.from_dict({"recalibrate_bn_batches": -1}, where="s")
