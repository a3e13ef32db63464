"""The contract for cluster/kmeans: ``cluster_weights_`` and ``apply`` give the same model, in place."""

from __future__ import annotations

import copy

import torch
from torch import nn

import netcompress as nc
from netcompress.clustering import ClusterConfig, cluster_weights, cluster_weights_
from netcompress.core.methods import MethodData, apply, method_for
from tests.state_checks import same_weights

FIELDS = {"clusters": 4, "exclude": ["2"], "init": "kmeans++", "seed": 3}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(6, 3))


def test_cluster_verb_and_method_give_the_same_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the verb has no folder: it writes nothing, here or anywhere
    by_verb, by_method = _model(), _model()
    summary = cluster_weights_(by_verb, **FIELDS)
    assert method_for(ClusterConfig).key == "cluster/kmeans"
    result = apply(by_method, ClusterConfig.from_dict({**FIELDS, "save": False}, where="test"), MethodData())
    assert result.model is by_method and same_weights(by_verb, by_method)
    assert summary == result.summary
    assert list(tmp_path.iterdir()) == []


def test_cluster_weights_underscore_changes_the_model_in_place_and_the_alias_matches():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    summary = nc.cluster_weights_(model, clusters=4)
    assert isinstance(summary, dict) and summary["clusters"] == 4
    assert not torch.equal(model[0].weight, before["0.weight"])
    other = _model()
    assert cluster_weights(other, ClusterConfig(clusters=4)) == summary
    assert same_weights(model, other)
