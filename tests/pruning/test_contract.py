"""The method contract for pruning: each Python verb and its registered method give the same model, and
verbs follow the in-place rule (a ``_`` verb changes its argument, the others never do)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import netcompress as nc
from netcompress.core.methods import MethodData, apply, find_method, method_for
from netcompress.pruning import (
    APoZConfig,
    AutoPruneConfig,
    ChannelPruneConfig,
    GradualConfig,
    IterativeChannelConfig,
    IterativeConfig,
    L1UnstructuredConfig,
    MeanActivationConfig,
    RandomUnstructuredConfig,
    ShrinkConfig,
    ShrinkSchedule,
    SlimmingConfig,
    SlimmingTrainConfig,
    prune_channels,
    prune_gradual,
    prune_gradual_,
    prune_iterative,
    prune_iterative_,
    prune_neurons,
    prune_neurons_iterative,
    prune_one_shot,
    prune_one_shot_,
    prune_to_target,
    prune_unstructured,
    prune_unstructured_,
    reconstruct_weights,
    reconstruct_weights_,
    shrink_to_target,
    slim,
)
from netcompress.pruning.channel import channel_prune
from netcompress.pruning.iterative_channel import prune_channels_iteratively
from tests.state_checks import same_weights, state_of, unchanged

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (model[1], model[5]):
            bn.weight.uniform_(0.1, 1.0)
    return model.eval()


def _mlp_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)


def _cnn_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 8, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0, 0, 0] > 0).long()), batch_size=8)


def _data(loader: DataLoader, **kw) -> MethodData:
    return MethodData(train_loader=loader, val_loader=loader, progress=False, **kw)


# --- every registered pruning method: the recipe step's config is the method's one config -------------

PRUNING_METHODS = {
    "prune/l1_unstructured": L1UnstructuredConfig,
    "prune/random_unstructured": RandomUnstructuredConfig,
    "prune/gradual": GradualConfig,
    "prune/iterative": IterativeConfig,
    "prune/apoz": APoZConfig,
    "prune/mean_activation": MeanActivationConfig,
    "prune/channel": ChannelPruneConfig,
    "prune/auto": AutoPruneConfig,
    "prune/slimming": SlimmingConfig,
    "prune/iterative_channel": IterativeChannelConfig,
    "prune/shrink": ShrinkConfig,
    "train/slimming": SlimmingTrainConfig,
}


@pytest.mark.parametrize("key", sorted(PRUNING_METHODS))
def test_each_method_has_its_own_config_next_to_the_algorithm(key):
    op, name = key.split("/")
    spec = find_method(op, name, where="test")
    assert spec.config is PRUNING_METHODS[key] and method_for(spec.config()) is spec
    assert "steps" not in spec.config.__module__ and "steps" not in spec.fn.__module__


def test_channel_verbs_share_one_set_of_defaults():
    for field in ("importance", "round_to", "min_channels"):
        assert getattr(ChannelPruneConfig, field) == getattr(AutoPruneConfig, field)
    assert prune_channels.__kwdefaults__["importance"] == prune_to_target.__kwdefaults__["importance"]
    assert prune_channels.__kwdefaults__["round_to"] == prune_to_target.__kwdefaults__["round_to"]
    assert prune_to_target.__kwdefaults__["reduction"] == AutoPruneConfig.reduction
    assert prune_to_target.__kwdefaults__["method"] == AutoPruneConfig.strategy


# --- verb == registered method (same fields, same seed) -------------------------------------------------


@pytest.mark.parametrize("method", ["l1", "random"])
def test_prune_unstructured_verb_equals_the_method(method):
    fields = {"amount": 0.6, "scope": "layer", "exclude": ["2"]}
    verb = _mlp()
    summary = prune_unstructured_(verb, method=method, seed=3, **fields)
    cls = {"l1": L1UnstructuredConfig, "random": RandomUnstructuredConfig}[method]
    step_fields = {**fields, "seed": 3} if method == "random" else fields
    result = apply(_mlp(), cls.from_dict(step_fields), MethodData())
    assert same_weights(verb, result.model)
    assert summary == result.summary


def test_prune_gradual_verb_equals_the_method():
    config = GradualConfig(final_sparsity=0.75, epochs=1, frequency_steps=1, train={"lr": 0.01})
    verb = _mlp()
    prune_gradual_(verb, _mlp_loader(), config=config, val_loader=_mlp_loader())
    result = apply(_mlp(), config, _data(_mlp_loader()))
    assert same_weights(verb, result.model)


def test_prune_iterative_verb_equals_the_method():
    config = IterativeConfig(amount_per_round=0.5, rounds=2, epochs_per_round=1, train={"lr": 0.01})
    verb = _mlp()
    prune_iterative_(verb, _mlp_loader(), config=config, val_loader=_mlp_loader())
    result = apply(_mlp(), config, _data(_mlp_loader()))
    assert same_weights(verb, result.model)


@pytest.mark.parametrize(
    ("criterion", "cls"), [("apoz", APoZConfig), ("mean_activation", MeanActivationConfig)]
)
def test_neuron_verbs_equal_the_methods(criterion, cls):
    one, _ = prune_neurons(_mlp(), _mlp_loader(), criterion=criterion, amount=0.25, max_batches=2)
    result = apply(_mlp(), cls(amount=0.25, max_batches=2), MethodData(calib_loader=_mlp_loader()))
    assert same_weights(one, result.model)
    rounds, _ = prune_neurons_iterative(
        _mlp(), _mlp_loader(), train_loader=_mlp_loader(), criterion=criterion, amount_per_round=0.25,
        rounds=2, max_batches=2, train_config={"epochs": 1, "lr": 0.01},
    )  # fmt: skip
    config = cls(amount=0.25, rounds=2, epochs_per_round=1, max_batches=2, train={"lr": 0.01})
    assert same_weights(rounds, apply(_mlp(), config, _data(_mlp_loader(), calib_loader=_mlp_loader())).model)


def test_prune_channels_verb_equals_the_method():
    fields = {"ratio": 0.5, "importance": "l2", "scope": "global", "recalibrate_bn_batches": 0}
    verb = prune_channels(_cnn(), X, ratio=0.5, importance="l2", scope="global")
    result = apply(_cnn(), ChannelPruneConfig.from_dict(fields), MethodData(example_inputs=X))
    assert same_weights(verb, result.model)


def test_prune_to_target_verb_equals_the_method():
    verb, summary = prune_to_target(_cnn(), X, target="macs", reduction=2.0, importance="l1")
    config = AutoPruneConfig(target="macs", reduction=2.0, importance="l1", recalibrate_bn_batches=0)
    result = apply(_cnn(), config, MethodData(example_inputs=X))
    assert same_weights(verb, result.model)
    assert summary["achieved_reduction"] == result.summary["achieved_reduction"]


def test_shrink_to_target_verb_equals_the_method():
    verb, _ = shrink_to_target(
        _cnn(), X, _cnn_loader(), train_config=nc.training.TrainConfig(lr=0.01, keep_best=False, progress=False),
        schedule=ShrinkSchedule(epochs=1, every=2), target="macs", reduction=2.0,
    )  # fmt: skip
    config = ShrinkConfig(
        target="macs", reduction=2.0, epochs=1, every=2, train={"lr": 0.01}, recalibrate_bn_batches=0
    )
    result = apply(_cnn(), config, _data(_cnn_loader(), example_inputs=X))
    assert same_weights(verb, result.model)


def test_slim_verb_equals_the_method():
    verb, _ = slim(_cnn(), X, percent=0.4)
    result = apply(
        _cnn(), SlimmingConfig(percent=0.4, recalibrate_bn_batches=0), MethodData(example_inputs=X)
    )
    assert same_weights(verb, result.model)


def test_slimming_training_equals_fit_with_the_penalty(tmp_path):
    from netcompress.pruning import BNL1Penalty
    from netcompress.training import TrainConfig, fit

    train = {"epochs": 1, "lr": 0.01, "keep_best": False, "progress": False}
    verb = _cnn().train()
    fit(verb, _cnn_loader(), config=TrainConfig(**train), hooks=[BNL1Penalty(lambda_=1e-3)])
    config = SlimmingTrainConfig(lambda_=1e-3, **train)
    result = apply(_cnn().train(), config, _data(_cnn_loader(), out_dir=tmp_path))
    assert same_weights(verb, result.model)


def test_iterative_channel_function_equals_the_method():
    config = IterativeChannelConfig(keep_per_round=0.75, rounds=1, train={"epochs": 1, "lr": 0.01})
    data = _data(_cnn_loader(), example_inputs=X)
    direct, _, _ = prune_channels_iteratively(_cnn(), data, config=config)
    assert same_weights(direct, apply(_cnn(), config, data).model)


# --- the in-place rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: prune_channels(m, X, ratio=0.5),
        lambda m: prune_to_target(m, X, reduction=2.0),
        lambda m: slim(m, X, percent=0.5),
        lambda m: channel_prune(m, X, ChannelPruneConfig()),
    ],
)
def test_verbs_without_underscore_leave_their_argument_untouched(call):
    model = _cnn()
    before = state_of(model)
    small = call(model)
    small = small[0] if isinstance(small, tuple) else small
    assert small is not model and unchanged(model, before)


def test_neuron_verbs_leave_their_argument_untouched():
    model = _mlp()
    before = state_of(model)
    prune_neurons(model, _mlp_loader(), amount=0.25)
    prune_neurons_iterative(model, _mlp_loader(), train_loader=None, rounds=2)
    assert unchanged(model, before)


@pytest.mark.parametrize(
    ("inplace", "alias"),
    [
        (lambda m: prune_unstructured_(m, amount=0.5), lambda m: prune_unstructured(m, amount=0.5)),
        (
            lambda m: prune_one_shot_(m, prune=nc.pruning.UnstructuredConfig(amount=0.5)),
            lambda m: prune_one_shot(m, prune=nc.pruning.UnstructuredConfig(amount=0.5)),
        ),
        (
            lambda m: prune_iterative_(m, None, config=IterativeConfig(rounds=1)),
            lambda m: prune_iterative(m, None, config=IterativeConfig(rounds=1)),
        ),
        (
            lambda m: prune_gradual_(m, _mlp_loader(), config=GradualConfig(epochs=1, train={"lr": 0.01})),
            lambda m: prune_gradual(m, _mlp_loader(), config=GradualConfig(epochs=1, train={"lr": 0.01})),
        ),
    ],
)
def test_underscore_verbs_change_their_argument_and_the_old_names_are_aliases(inplace, alias):
    a, b = _mlp(), _mlp()
    before = state_of(a)
    summary = inplace(a)
    assert isinstance(summary, dict) and not unchanged(a, before)
    assert alias(b).keys() == summary.keys()
    assert same_weights(a, b)


def test_reconstruct_weights_changes_the_pruned_model_in_place():
    model = _cnn()
    small, summary = channel_prune(model, X, ChannelPruneConfig(ratio=0.5, importance="l1"))
    twin = copy.deepcopy(small)
    before, original = state_of(small), state_of(model)
    report = reconstruct_weights_(
        small, model, _cnn_loader(), kept_indices=summary["kept_indices"], num_batches=2
    )
    assert not unchanged(small, before) and unchanged(model, original)
    assert (
        reconstruct_weights(twin, model, _cnn_loader(), kept_indices=summary["kept_indices"], num_batches=2)[
            "layers"
        ]
        == report["layers"]
    )
    assert same_weights(small, twin)


def test_top_level_names():
    assert nc.prune_unstructured_ is prune_unstructured_ and nc.reconstruct_weights_ is reconstruct_weights_
    assert not hasattr(nc.pruning, "prune_channels_with_summary")


def test_channel_verbs_take_the_recipe_config_too():
    import torch

    import netcompress as nc
    from netcompress.pruning import AutoPruneConfig, ChannelPruneConfig

    torch.manual_seed(0)
    model = nc.models.create("digits_cnn")
    x = torch.randn(4, 1, 8, 8)
    by_keywords = nc.prune_channels(model, x, ratio=0.5, importance="l2")
    by_config = nc.prune_channels(model, x, config=ChannelPruneConfig(ratio=0.5, importance="l2"))
    assert all(
        torch.equal(a, b) for a, b in zip(by_keywords.state_dict().values(), by_config.state_dict().values())
    )
    small_k, sum_k = nc.prune_to_target(model, x, reduction=2.0)
    small_c, sum_c = nc.prune_to_target(model, x, config=AutoPruneConfig(reduction=2.0))
    assert sum_k["rates"] == sum_c["rates"]
    assert all(
        torch.equal(a, b) for a, b in zip(small_k.state_dict().values(), small_c.state_dict().values())
    )


def test_prune_unstructured_takes_the_recipe_config_too():
    import torch

    import netcompress as nc
    from netcompress.pruning import L1UnstructuredConfig

    torch.manual_seed(0)
    a = nc.models.create("digits_cnn")
    b = nc.models.create("digits_cnn")
    b.load_state_dict(a.state_dict())
    nc.prune_unstructured_(a, amount=0.7, scope="layer")
    nc.prune_unstructured_(b, config=L1UnstructuredConfig(amount=0.7, scope="layer"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_prune_transformer_verb_equals_the_method():
    """``prune_transformer`` (keywords or config) and ``apply(TransformerPruneConfig)`` give the same weights."""
    transformers = pytest.importorskip("transformers")
    from netcompress.pruning import TransformerPruneConfig, prune_transformer

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99
    )
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batches = [{**inputs, "labels": torch.tensor([0, 1])}]
    config = TransformerPruneConfig(heads=0.5, ffn=0.5, hidden=0.25, importance="wanda", calib_batches=1)
    result = apply(model, config, MethodData(example_inputs=inputs, calib_loader=batches))
    verb = prune_transformer(
        model, inputs, heads=0.5, ffn=0.5, hidden=0.25, importance="wanda", calib_batches=1, loader=batches
    )
    assert same_weights(verb, result.model)
    assert same_weights(prune_transformer(model, inputs, config=config, loader=batches), result.model)
    assert result.summary["hidden_after"] == 24 and [r["after"] for r in result.summary["heads"]] == [2, 2]
    assert method_for(config).key == "prune/transformer"


# --- semi-structured N:M and one-shot (Wanda, SparseGPT) pruning: verb == registered method -------------


def _calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(16, 8, generator=g) for _ in range(3)]


@pytest.mark.parametrize(
    ("verb", "config"),
    [
        (lambda m: nc.prune_n_m_(m, n=1, m=4, exclude=["2"]), nc.pruning.NMConfig(n=1, m=4, exclude=["2"])),
        (
            lambda m: nc.prune_n_m_(m, _calib(), importance="wanda", calib_batches=2),
            nc.pruning.NMConfig(importance="wanda", calib_batches=2),
        ),
        (lambda m: nc.prune_wanda_(m, _calib(), amount=0.6), nc.pruning.WandaConfig(amount=0.6)),
        (
            lambda m: nc.prune_sparsegpt_(m, _calib(), amount=0.7, block_size=4, damp=0.05),
            nc.pruning.SparseGPTConfig(amount=0.7, block_size=4, damp=0.05),
        ),
        (lambda m: nc.prune_sparsegpt_(m, _calib(), n=2, m=4), nc.pruning.SparseGPTConfig(n=2, m=4)),
    ],
    ids=["n_m", "n_m-wanda", "wanda", "sparsegpt", "sparsegpt-2:4"],
)
def test_one_shot_verbs_equal_the_methods(verb, config):
    a = _mlp()
    before = state_of(a)
    summary = verb(a)
    result = apply(_mlp(), config, MethodData(calib_loader=_calib()))
    assert not unchanged(a, before)  # in place
    assert same_weights(a, result.model)
    assert summary == result.summary
