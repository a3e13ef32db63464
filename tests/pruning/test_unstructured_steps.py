"""Recipe steps of unstructured and neuron pruning: configs validated, summaries JSON-able, sparse.ncz written."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import netcompress.pruning  # noqa: F401  (registers the methods)
from netcompress.core import ConfigError
from netcompress.core.methods import METHODS, MethodData
from netcompress.pruning.sparse_storage import load_sparse

OUR_STEPS = {
    "prune/l1_unstructured": {"amount": 0.75, "scope": "layer"},
    "prune/random_unstructured": {"amount": 0.75, "seed": 1},
    "prune/gradual": {"final_sparsity": 0.75, "epochs": 1, "frequency_steps": 1, "train": {"lr": 0.01}},
    "prune/iterative": {"amount_per_round": 0.5, "rounds": 2, "epochs_per_round": 1},
    "prune/apoz": {"amount": 0.25, "max_batches": 2},
    "prune/mean_activation": {"amount": 0.25, "rounds": 2, "epochs_per_round": 1},
}


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))  # 192 weights, 212 params


def _ctx(tmp_path) -> MethodData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    return MethodData(
        train_loader=loader,
        val_loader=loader,
        example_inputs=x[:1],
        out_dir=tmp_path,
        num_classes=4,
        progress=False,
    )


def test_all_our_steps_are_registered():
    assert set(OUR_STEPS) <= set(METHODS.names())


@pytest.mark.parametrize("key", sorted(OUR_STEPS))
def test_step_runs_and_summary_is_json(tmp_path, key):
    if key in ("prune/gradual", "prune/iterative", "prune/mean_activation"):
        training = pytest.importorskip("netcompress.training")
        if not hasattr(training, "fit"):
            pytest.skip("netcompress.training.fit has not landed yet")
    spec = METHODS.get(key)
    config = spec.config.from_dict(OUR_STEPS[key], where=key)
    assert spec.config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    result = spec.fn(_mlp(), config, _ctx(tmp_path))
    json.dumps(result.summary)
    params = sum(p.numel() for p in result.model.parameters())
    if key in ("prune/apoz", "prune/mean_activation"):
        rounds = OUR_STEPS[key].get("rounds", 1)
        hidden = 12 if rounds == 1 else 9  # 16 -> 12 -> 9
        assert params == 8 * hidden + hidden + hidden * 4 + 4 == result.summary["params_after"]
        return
    nonzero = sum(int(p.count_nonzero()) for p in result.model.parameters())
    assert nonzero == 192 // 4 + 20  # 75% of the 192 weights pruned; 20 biases kept
    path = tmp_path / "sparse.ncz"
    assert result.summary["sparse_size_bytes"] == path.stat().st_size < result.summary["dense_size_bytes"]
    restored = load_sparse(path, _mlp())
    assert torch.equal(restored[0].weight, result.model[0].weight)


@pytest.mark.parametrize(
    ("key", "fields", "named"),
    [
        ("prune/l1_unstructured", {"amout": 0.5}, "'amout'"),
        ("prune/l1_unstructured", {"amount": 2}, "amount"),
        ("prune/gradual", {"final_sparsity": 0.5, "train": {"lrr": 0.1}}, "'lrr'"),
        ("prune/iterative", {"rounds": 0}, "rounds"),
        ("prune/apoz", {"amount": -0.1}, "amount"),
        ("prune/mean_activation", {"layers": "0"}, "layers"),
    ],
)
def test_step_configs_reject_bad_fields(key, fields, named):
    with pytest.raises(ConfigError, match=named):
        METHODS.get(key).config.from_dict(fields, where=key)
