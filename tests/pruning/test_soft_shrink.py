"""Soft progressive channel pruning: the chosen channels fade to exactly zero, removing them changes nothing."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import netcompress.pruning  # noqa: F401  (registers the methods)
from netcompress.core import ConfigError
from netcompress.core.methods import METHODS, MethodData
from netcompress.pruning.auto import prune_to_target
from netcompress.pruning.channel import count_total_macs
from netcompress.pruning.graph_tracing import build_channel_graph
from netcompress.pruning.soft_shrink import (
    ChannelShrink,
    ShrinkSchedule,
    plan_selection,
    shrink_to_target,
    units_from_keep,
)
from netcompress.training import TrainConfig

X = torch.randn(2, 3, 8, 8)


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


def loader(batches: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen))
        for _ in range(batches)
    ]


TRAIN = TrainConfig(
    epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="constant", seed=0, progress=False
)


def test_units_from_keep_inverts_a_plan() -> None:
    model = net().eval()
    _, summary = prune_to_target(model, X, target="macs", reduction=3.0, round_to=1)
    graph = build_channel_graph(model, X)
    units = units_from_keep(graph, summary["kept_indices"])
    assert len(units) == summary["channels_pruned"]
    assert graph.keep_indices(units) == summary["kept_indices"]


def test_shrink_reaches_the_target_and_the_pruned_model_equals_the_masked_one() -> None:
    model = net()
    reference = copy.deepcopy(model).eval()
    small, summary = shrink_to_target(
        model, X, loader(), train_config=TRAIN, schedule=ShrinkSchedule(epochs=2, every=3, refresh_until=0.5),
        target="macs", reduction=4.0, round_to=1,
    )  # fmt: skip
    achieved = count_total_macs(reference, X) / count_total_macs(small, X)
    assert 4.0 <= achieved <= 4.0 * 1.1
    # refreshed on steps 1 and 4 of 8 (every 3, until half the fade)
    assert [r["step"] for r in summary["refreshes"]] == [1, 4]
    batch = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        # the removed channels were exactly zero: only the summation order differs
        torch.testing.assert_close(small.eval()(batch), model.eval()(batch), atol=1e-6, rtol=1e-5)
    # and the model trained: it is not the untouched network with channels cut
    assert not torch.equal(model[0].weight[:1], reference[0].weight[:1])


def test_fade_is_linear_and_a_dropped_unit_regrows_freely() -> None:
    model = net()
    graph = build_channel_graph(model.eval(), X)
    group = graph.prunable_groups()[0]  # the first conv's 16 channels
    a, b = group.unit_ids[0], group.unit_ids[1]
    choices = iter([{a}, {b}])
    hook = ChannelShrink(graph, lambda m: next(choices), steps=4, every=2, refresh_until=1.0)
    gamma = model[1].weight
    with torch.no_grad():
        gamma.fill_(2.0)
    hook.after_step(model)  # step 1: {a} chosen, at 3/4
    assert gamma[0].item() == pytest.approx(1.5) and gamma[1].item() == pytest.approx(2.0)
    hook.after_step(model)  # step 2: 2/4 of 2.0
    assert gamma[0].item() == pytest.approx(1.0)
    hook.after_step(model)  # step 3: re-chosen {b}: b starts at 1/4 of its size, a is left where it was
    assert gamma[1].item() == pytest.approx(0.5) and gamma[0].item() == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="before the fade ended"):
        hook.remove(model, X)
    hook.after_step(model)  # step 4: b is zero, in every layer that writes it
    assert gamma[1].item() == 0.0 and model[1].bias[1].item() == 0.0
    assert torch.count_nonzero(model[0].weight[1]) == 0 and model[0].bias[1].item() == 0.0
    assert hook.done and hook.plan().pruned_units == {b}
    hook.after_step(model)  # nothing after the end
    assert hook.step == 4


def test_plan_selection_follows_the_current_weights() -> None:
    model = net().eval()
    graph = build_channel_graph(model, X)
    select = plan_selection(X, graph, target="macs", reduction=2.0, round_to=1)
    first = select(model)
    group = graph.prunable_groups()[0]
    kept = [u for u in group.unit_ids if u not in first]
    with torch.no_grad():  # make a kept channel of the first group the weakest by far
        index = group.unit_ids.index(kept[0])
        model[0].weight[index].mul_(1e-6)
        model[1].weight[index] = 0.0
        model[3].weight[:, index].mul_(1e-6)
    assert kept[0] in select(model)


def test_recipe_step_reaches_the_target_and_reports_json(tmp_path) -> None:
    spec = METHODS.get("prune/shrink")
    config = spec.config.from_dict(
        {"target": "macs", "reduction": 3.0, "epochs": 1, "every": 2, "train": {"lr": 0.05}}, where="test"
    )
    model = net().eval()
    data = MethodData(train_loader=loader(), val_loader=loader(2), example_inputs=X, progress=False)
    result = spec.fn(model, config, data)
    json.dumps(result.summary)
    assert result.summary["achieved_reduction"] == pytest.approx(
        count_total_macs(model, X) / count_total_macs(result.model, X)
    )
    assert 3.0 <= result.summary["achieved_reduction"] <= 3.3
    assert len(result.history) == 1 and result.summary["bn_recalibration"]
    assert torch.equal(model[0].weight, net()[0].weight)  # the step's input model is left untouched


@pytest.mark.parametrize(
    ("fields", "named"),
    [({"target": "latency"}, "target"), ({"every": 0}, "every"), ({"train": {"lrr": 0.1}}, "'lrr'")],
)
def test_recipe_step_rejects_bad_settings(fields: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        METHODS.get("prune/shrink").config.from_dict(fields, where="test")


def test_recipe_step_needs_a_loader_with_a_length() -> None:
    spec = METHODS.get("prune/shrink")
    data = MethodData(train_loader=iter(loader()), example_inputs=X, progress=False)
    with pytest.raises(ConfigError, match="length"):
        spec.fn(net(), spec.config(), data)
