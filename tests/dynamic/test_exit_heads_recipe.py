"""The recipe step ``dynamic/early_exit`` takes one head kind per exit as ``add_early_exits`` does: a YAML list
in the order of ``exits``; a wrong count or an unknown kind is a ConfigError naming it, before any training."""

from __future__ import annotations

import pytest
import torch

from netcompress import data, models
from netcompress.core.errors import ConfigError
from netcompress.dynamic import EarlyExitConfig, with_early_exits
from netcompress.dynamic.exit_heads import PoolGridConvLinearHead, PoolLinearHead

X = torch.randn(2, 1, 8, 8)


def test_one_head_kind_per_exit_from_the_config():
    bundle = data.load("synthetic", num_samples=64, input_shape=(1, 8, 8), num_classes=4, separation=2.0)
    train, val = bundle.loaders(batch_size=32, eval_batch_size=64)
    torch.manual_seed(0)
    config = EarlyExitConfig.from_dict(
        {"exits": ["features.2", "features.5"], "head": ["pool_linear", "pool_grid_conv_linear"], "epochs": 1,
         "thresholds": [0.0, 0.9], "deploy_threshold": 0.9, "progress": False},
        where="recipe step",
    )  # fmt: skip
    ee, summary = with_early_exits(models.create("digits_cnn", num_classes=4), train, val_loader=val,
                                   example_inputs=X, config=config)  # fmt: skip
    assert [type(h) for h in ee.heads] == [PoolLinearHead, PoolGridConvLinearHead]
    assert summary["head"] == ["pool_linear", "pool_grid_conv_linear"]


@pytest.mark.parametrize(
    ("head", "message"),
    [(["pool_linear"], "1 kinds for 2 exits"), (["pool_linear", "no_such_head"], "no_such_head"), (3, "head=3")],
)
def test_a_wrong_head_list_is_named_before_training(head, message):
    with pytest.raises(ConfigError, match=message):
        EarlyExitConfig.from_dict({"exits": ["features.2", "features.5"], "head": head}, where="recipe step")
