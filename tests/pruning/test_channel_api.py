"""prune_channels: exact parameter/MAC counts, importance criteria, options, summary, registry models."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.pruning.channel import (
    ChannelPruneConfig,
    apply_channel_plan,
    channel_prune,
    count_total_macs,
    keep_count,
    plan_channel_pruning,
    prune_channels,
)
from netcompress.pruning.graph_tracing import build_channel_graph
from netcompress.pruning.importance import IMPORTANCES, fpgm_importance, layer_scores, unit_scores

X = torch.randn(2, 3, 8, 8)


def small_vgg() -> nn.Sequential:
    """conv(3->8) BN ReLU pool conv(8->16) BN ReLU pool flatten Linear(16*2*2 -> 10): 2,090 parameters."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def vgg_params(c1: int, c2: int) -> int:
    # conv1 + bn1 + conv2 + bn2 + fc (each channel of conv2 is 2*2 features of the Linear)
    return (3 * c1 * 9 + c1) + 2 * c1 + (c1 * c2 * 9 + c2) + 2 * c2 + (c2 * 4 * 10 + 10)


def test_vgg_parameter_and_mac_counts_are_exact() -> None:
    model = small_vgg()
    assert n_params(model) == vgg_params(8, 16) == 2090
    small, summary = channel_prune(model, X, ChannelPruneConfig(ratio=0.5, importance="l1", round_to=1))
    assert n_params(small) == vgg_params(4, 8) == 762
    assert (summary["params_before"], summary["params_after"]) == (2090, 762)
    # MACs per sample x2: conv1 8*8*8*27 + conv2 4*4*16*72 + fc 640 = 32,896 -> pruned 11,840
    assert (summary["macs_before"], summary["macs_after"]) == (2 * 32896, 2 * 11840)
    assert summary["architecture"] == [
        "Conv2d(3, 4)",
        "BatchNorm2d(4)",
        "Conv2d(4, 8)",
        "BatchNorm2d(8)",
        "Linear(32, 10)",
    ]
    conv2 = next(row for row in summary["layers"] if row["name"] == "4")
    assert (
        conv2["in_channels"],
        conv2["in_channels_after"],
        conv2["out_channels"],
        conv2["out_channels_after"],
    ) == (
        8,
        4,
        16,
        8,
    )
    assert n_params(prune_channels(model, X, ratio=0.25)) == vgg_params(6, 12) == 1354


def test_summary_names_the_surviving_channels_of_every_layer() -> None:
    model = small_vgg()
    small, summary = channel_prune(model, X, ChannelPruneConfig(ratio=0.5, importance="l1", round_to=1))
    kept = summary["kept_indices"]
    conv1, conv2, fc = kept["0"], kept["4"], kept["9"]
    assert len(conv1["out"]) == 4 and conv2["in"] == conv1["out"] and len(conv2["out"]) == 8
    # the pruned weights are the original ones at exactly those indices
    assert torch.equal(small[0].weight, model[0].weight[conv1["out"]])
    assert torch.equal(small[4].weight, model[4].weight[conv2["out"]][:, conv2["in"]])
    assert torch.equal(small[1].running_mean, model[1].running_mean[conv1["out"]])
    # the Linear keeps the 4 flattened features (2x2) of each surviving channel, and all its outputs
    assert fc["in"] == [c * 4 + k for c in conv2["out"] for k in range(4)] and fc["out"] == list(range(10))
    # top-1 by L1 norm: conv1's kept filters are its largest
    norms = model[0].weight.abs().sum((1, 2, 3))
    assert set(conv1["out"]) == set(norms.argsort(descending=True)[:4].tolist())


def test_keep_count_rounding() -> None:
    assert keep_count(64, 0.5) == 32
    assert keep_count(10, 0.95) == 1  # min_channels
    assert keep_count(10, 0.3, round_to=4) == 8
    assert keep_count(10, 1.0, min_channels=3) == 3


def test_round_to_ignore_and_ratios() -> None:
    model = small_vgg()
    assert [m.out_channels for m in prune_channels(model, X, ratio=0.3, round_to=4)[0:5:4]] == [8, 12]
    ignored = prune_channels(model, X, ratio=0.5, ignore=["0"])
    assert (ignored[0].out_channels, ignored[4].out_channels) == (8, 8)
    per_layer = prune_channels(model, X, ratio=0.5, ratios={"re:4": 0.75})
    assert (per_layer[0].out_channels, per_layer[4].out_channels) == (4, 4)
    with pytest.raises(ConfigError, match="'conv9'"):
        prune_channels(model, X, ignore=["conv9"])
    with pytest.raises(ConfigError, match="importance"):
        prune_channels(model, X, importance="nope")
    with pytest.raises(ConfigError, match="ratio"):
        prune_channels(model, X, ratio=1.5)


def test_l1_keeps_the_largest_filters() -> None:
    model = small_vgg()
    with torch.no_grad():
        for i in range(8):
            model[0].weight[i] = (i + 1) * 0.1  # filter norms grow with the index
    plan = plan_channel_pruning(model, X, ratio=0.5, importance="l1")
    assert plan.keep_indices()["0"]["out"] == [4, 5, 6, 7]


def test_bn_scale_keeps_the_largest_gammas() -> None:
    model = small_vgg()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.9, -0.01, 0.5, 0.02, -0.7, 0.03, 0.6, 0.04]))
    plan = plan_channel_pruning(model, X, ratio=0.5, importance="bn_scale")
    assert plan.keep_indices()["1"]["out"] == [0, 2, 4, 6]


def test_fpgm_scores_are_distances_to_other_filters() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.ReLU(), nn.Conv2d(3, 2, 1))
    with torch.no_grad():
        conv[0].weight.copy_(torch.tensor([0.0, 1.0, 3.0]).view(3, 1, 1, 1))
    graph = build_channel_graph(conv, torch.randn(2, 1, 4, 4))
    scores = fpgm_importance(conv, graph)["0"]
    assert torch.allclose(scores, torch.tensor([4.0, 3.0, 5.0]))  # |0-1|+|0-3|, |1-0|+|1-3|, |3-0|+|3-1|


def test_group_l2_adds_bn_and_consumer_input_weights() -> None:
    model = small_vgg()
    graph = build_channel_graph(model, X)
    scores = unit_scores(graph, layer_scores("group_l2", model, graph))
    (gid,) = [g.id for g in graph.groups if "0" in g.producers]
    w0, bn, w1 = model[0].weight.detach(), model[1], model[4].weight.detach()
    by_hand = (
        w0.pow(2).flatten(1).sum(1)  # the filter (biases are left out, as in Torch-Pruning)
        + bn.weight.detach().pow(2)  # BatchNorm gamma
        + w1.pow(2).sum(dim=(0, 2, 3))  # conv 4's input-channel slice
    )  # fmt: skip
    assert torch.allclose(scores[gid], by_hand, rtol=1e-5)
    # the Linear after the flatten: each conv-4 channel owns 2x2 = 4 input features of layer 9
    (gid2,) = [g.id for g in graph.groups if "4" in g.producers]
    w9 = model[9].weight.detach().pow(2).sum(0).view(16, 4).sum(1)
    w4 = model[4].weight.detach().pow(2).flatten(1).sum(1)
    bn2 = model[5].weight.detach().pow(2)
    assert torch.allclose(scores[gid2], w4 + bn2 + w9, rtol=1e-5)


def test_group_l2_keeps_channels_whose_outgoing_weights_are_large() -> None:
    model = small_vgg()
    with torch.no_grad():
        model[0].weight.fill_(0.1)  # equal filters: l1/l2 cannot tell the channels apart
        model[4].weight.mul_(0.01)
        model[4].weight[:, [1, 3, 5, 7]] = 1.0  # only these channels feed conv 4 strongly
    plan = plan_channel_pruning(model, X, ratio=0.5, importance="group_l2")
    assert plan.keep_indices()["0"]["out"] == [1, 3, 5, 7]


def _loader(n_batches: int = 2):
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen))
        for _ in range(n_batches)
    ]


@pytest.mark.parametrize("importance", IMPORTANCES.names())
def test_every_importance_prunes_to_the_same_shape(importance: str) -> None:
    model = small_vgg().eval()
    before = copy.deepcopy(model.state_dict())
    small = prune_channels(model, X, ratio=0.5, importance=importance, loader=_loader())
    assert n_params(small) == 762
    assert small(X).shape == (2, 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_taylor_needs_a_loader_and_matches_manual_gradient() -> None:
    model = small_vgg().eval()
    with pytest.raises(ConfigError, match="loader"):
        prune_channels(model, X, importance="taylor")
    loader = _loader(1)
    graph = build_channel_graph(model, X)
    scores = IMPORTANCES.get("taylor")(model, graph, loader=loader, max_batches=1)
    work = copy.deepcopy(model)
    nn.functional.cross_entropy(work(loader[0][0]), loader[0][1]).backward()
    expected = (work[0].weight * work[0].weight.grad).abs().flatten(1).sum(1) + (
        work[0].bias * work[0].bias.grad
    ).abs()
    assert torch.allclose(scores["0"], expected.detach(), atol=1e-7)
    assert model[0].weight.grad is None  # gradients were taken on a copy


def test_global_scope_prunes_the_requested_share_overall() -> None:
    model = small_vgg()
    with torch.no_grad():
        model[4].weight.mul_(100.0)  # global normalisation must make this scale irrelevant
    plan = plan_channel_pruning(model, X, ratio=0.5, scope="global")
    keep = plan.keep_indices()
    removed = (8 - len(keep["0"]["out"])) + (16 - len(keep["4"]["out"]))
    assert removed == 12  # floor(0.5 * 24)
    assert len(keep["0"]["out"]) >= 1 and len(keep["4"]["out"]) >= 1


def test_pruned_model_pickles_and_input_untouched() -> None:
    model = small_vgg()
    small = prune_channels(model, X, ratio=0.5)
    buffer = io.BytesIO()
    torch.save(small, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded.eval()(X), small.eval()(X))
    assert model[0].out_channels == 8 and n_params(model) == 2090
    assert count_total_macs(small, X) < count_total_macs(model, X)


def test_apply_refuses_a_changed_output_shape() -> None:
    model = small_vgg()
    plan = plan_channel_pruning(model, X, ratio=0.5)
    fc_group = next(g for g in plan.graph.groups if g.producers == ["9"])
    plan.pruned_units.add(fc_group.unit_ids[0])  # force pruning of the output layer
    with pytest.raises(Exception, match="output shapes|no longer runs"):
        apply_channel_plan(model, plan, X)


REGISTRY_MODELS = {
    "cifar_vgg": {"cfg": [16, "M", 32, "M"], "num_classes": 10},
    "cifar_resnet20": {"num_classes": 10},
    "mobilenet_student": {"num_classes": 10},
    "sincnet": {"num_classes": 10},
    "digits_cnn": {},
}


@pytest.mark.parametrize("name", sorted(REGISTRY_MODELS))
def test_registry_models_prune(name: str) -> None:
    models = pytest.importorskip("netcompress.models")
    if not hasattr(models, "create") or name not in models.list_models():
        pytest.skip(f"model {name} is not registered yet")
    try:
        model = models.create(name, **REGISTRY_MODELS[name]).eval()
    except ConfigError as exc:
        pytest.skip(f"model {name} options changed: {exc}")
    x = torch.randn(2, *models.input_shape(name, **REGISTRY_MODELS[name]))
    small, summary = channel_prune(model, x, ChannelPruneConfig(ratio=0.3, importance="l1", round_to=1))
    assert small(x).shape == model(x).shape
    assert summary["params_after"] < summary["params_before"]
    assert summary["macs_after"] < summary["macs_before"]
    if name != "sincnet":  # log|x| in SincNet's front end maps a zeroed channel to log(eps), not 0
        plan = plan_channel_pruning(model, x, ratio=0.3)
        with torch.no_grad():
            diff = apply_channel_plan(model, plan, x).eval()(x) - zero_removed_outputs(model, plan)(x)
        assert diff.abs().max().item() < 1e-5


def zero_removed_outputs(model: nn.Module, plan) -> nn.Module:
    """The masked reference: removed output channels get zero filter, bias and BN weight/bias."""
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, keep in plan.keep_indices().items():
            module, layer = ref.get_submodule(name), plan.graph.layers[name]
            removed = sorted(set(range(len(layer.out_labels or ()))) - set(keep["out"] or ()))
            if removed and layer.kind != "custom":
                module.weight[removed] = 0.0
                if getattr(module, "bias", None) is not None:
                    module.bias[removed] = 0.0
    return ref
