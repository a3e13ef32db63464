"""Clustering that composes with BN folding, QAT and pruning (issue 16 item 2)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.clustering import ClusterConfig, ClusterPreserving, clustered_modules, kmeans_1d
from netcompress.clustering.grid import snap_codebooks_to_grid
from netcompress.clustering.weight_sharing import snap_clusters
from netcompress.core.methods import MethodData, apply
from netcompress.quantization.bn_folding import fold_bn, fold_bn_and_report, fold_bn_into
from netcompress.quantization.modules import quant_layers
from netcompress.quantization.qat import QATConfig

K = 8


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    with torch.no_grad():  # BN statistics far from identity, so folding matters
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _distinct(model: nn.Module) -> dict[str, int]:
    return {
        n: int(m.weight.detach().unique().numel())
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    }


def _quantized_distinct(qmodel: nn.Module) -> dict[str, int]:
    return {n: int(q.quantized_weight().unique().numel()) for n, q in quant_layers(qmodel).items()}


X = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # not the global RNG: order-free


def test_fold_bn_on_a_clustered_model_keeps_sharing_and_does_not_snap_to_the_old_codebook():
    # the defect: fold_bn on a clustered model was off by 0.165 (the hook snapped the folded weights
    # back onto the old codebook); without the hook 8 values became hundreds per layer
    model = _bn_net()
    nc.cluster_weights_(model, clusters=K, exclude=["8"])
    with torch.no_grad():
        reference = model(X)
    folded, summary = fold_bn_and_report(model)
    assert summary["reclustered"] == ["0", "3"]
    assert all(v <= K for v in _distinct(folded).values())
    with torch.no_grad():
        err = float((folded(X) - reference).abs().max())
    # the old behaviour on this model: fold, then the hook snaps onto the old indices (cluster means)
    stale = copy.deepcopy(model)
    for conv, bn in ((0, 1), (3, 4)):
        fold_bn_into(stale[conv], stale[bn])
        stale[bn] = nn.Identity()
    snap_clusters(stale)
    with torch.no_grad():
        stale_err = float((stale(X) - reference).abs().max())
    assert err < 0.6 * stale_err  # 0.020 against 0.037 here


def test_clustering_after_folding_composes_exactly_with_fold_bn_and_qat():
    model = _bn_net()
    summary = nc.cluster_weights_(model, clusters=K, fold_bn=True, exclude=["8"])
    assert summary["bn_folded"] == [["0", "1"], ["3", "4"]]
    with torch.no_grad():
        reference = model(X)
    folded = fold_bn(model)
    with torch.no_grad():
        assert torch.allclose(folded(X), reference, atol=1e-5)
    assert _distinct(folded) == {"0": K, "3": K}
    qmodel = nc.prepare_qat(model, bits=8, act_bits=None, calib_loader=[(X, None)])
    assert qmodel.qat_info["grid_clustered"] == ["0", "3"]
    dist = _quantized_distinct(qmodel)
    assert dist["0"] <= K and dist["3"] <= K  # per-tensor scale: k shared values stay k codes
    with torch.no_grad():  # centroids moved at most half a grid step: the function barely moves
        assert float((qmodel.eval()(X) - reference).abs().max()) < 0.02
        # the weights ARE the codebook, on the grid: fake quantization changes nothing more
        for name, q in quant_layers(qmodel).items():
            if name in ("0", "3"):
                assert torch.equal(q.quantized_weight(), q.layer.weight.detach())


def test_qat_training_keeps_at_most_k_values_on_the_grid():
    model = _bn_net()
    nc.cluster_weights_(model, clusters=K, fold_bn=True, exclude=["8"])
    loader = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(3)]
    config = QATConfig(bits=6, act_bits=8, epochs=1, lr=0.05, optimizer="adam")
    result = apply(model, config, MethodData(train_loader=loader, calib_loader=loader))
    qmodel = result.model
    dist = _quantized_distinct(qmodel)
    assert dist["0"] <= K and dist["3"] <= K
    for name in ("0", "3"):
        layer = quant_layers(qmodel)[name]
        assert torch.equal(layer.quantized_weight(), layer.layer.weight.detach())  # on the grid
    assert snap_codebooks_to_grid(qmodel) == ["0", "3"]


def test_sparsity_preserving_clustering_keeps_pruned_weights_zero_through_finetuning():
    model = _bn_net()
    nc.prune_unstructured_(model, amount=0.8, scope="layer")
    pruned = {n: m.weight.detach() == 0 for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    nc.cluster_weights_(model, clusters=K)
    for name, module in clustered_modules(model):
        if name in pruned:
            assert bool((module.weight[pruned[name]] == 0).all())
            assert 0.0 in module.weight_codebook.tolist() and module.weight_codebook.numel() == K
    loader = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(4)]
    nc.fit(
        model.train(),
        loader,
        config={"epochs": 2, "lr": 0.05, "optimizer": "adam"},
        hooks=[ClusterPreserving()],
    )
    with torch.no_grad():
        model.eval()(X)
    for name, module in clustered_modules(model):
        if name in pruned:
            assert bool((module.weight[pruned[name]] == 0).all()), name
            assert module.weight.detach().unique().numel() <= K


@pytest.mark.parametrize("init", ["linear", "kmeans++", "density"])
def test_initialisations(init):
    torch.manual_seed(0)
    values = torch.cat([torch.randn(2000) * 0.1, torch.tensor([3.0, -3.0])])
    codebook, idx = kmeans_1d(values, clusters=8, init=init)
    assert codebook.numel() == 8 and bool((codebook[1:] > codebook[:-1]).all())
    assert float((codebook[idx] - values).pow(2).mean()) < 0.01
    if init == "density":  # quantiles: the dense centre gets most centroids
        assert int(((codebook > -0.2) & (codebook < 0.2)).sum()) >= 4


def test_cluster_loss_regulariser_runs_before_clustering_and_pulls_weights_to_centroids():
    loader = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(4)]
    plain, reg = _bn_net(), _bn_net()
    base = apply(plain, ClusterConfig(clusters=4, exclude=["8"]), MethodData(train_loader=loader)).summary
    config = ClusterConfig(clusters=4, exclude=["8"], cluster_loss=5.0, cluster_loss_epochs=2, lr=0.02)
    result = apply(reg, config, MethodData(train_loader=loader))
    assert result.summary["cluster_loss_epochs"] == 2 and len(result.history) == 2
    mse = {r["name"]: r["weight_mse"] for r in result.summary["layers"]}
    assert all(mse[r["name"]] < r["weight_mse"] for r in base["layers"])  # snapping moves weights less
    with pytest.raises(
        nc.core.errors.ConfigError if hasattr(nc, "core") else Exception, match="train_loader"
    ):
        apply(_bn_net(), ClusterConfig(cluster_loss=1.0), MethodData())


def test_prepare_qat_on_a_model_clustered_before_folding_keeps_k_values_per_layer():
    # the defect: prepare_qat folded BN into clustered weights and the hook snapped them onto the old
    # codebook (0.19 off); without the hook 8 values became 432 / 4,606 / 320 per layer
    model = _bn_net()
    nc.cluster_weights_(model, clusters=K, exclude=["8"])
    qmodel = nc.prepare_qat(model, bits=8, act_bits=None, calib_loader=[(X, None)])
    assert qmodel.qat_info["fold_bn"]["reclustered"] == ["0", "3"]
    dist = _quantized_distinct(qmodel)
    assert dist["0"] <= K and dist["3"] <= K
    folded_float = fold_bn(copy.deepcopy(model))  # the re-clustered float model QAT starts from
    with torch.no_grad():
        assert float((qmodel.eval()(X) - folded_float(X)).abs().max()) < 0.02


def _per_channel_distinct(model: nn.Module) -> int:
    """Distinct deployed values of layer "0" when every channel had its own scale (the old PTQ plan)."""
    qmodel = nc.quantize(model, calib_loader=[(X, None)], bits=8, act_bits=None, granularity="per_channel",
                         layers={"0": {"granularity": "per_channel"}})  # fmt: skip
    return _quantized_distinct(qmodel)["0"]


def test_ptq_of_a_clustered_model_gives_clustered_layers_one_scale_per_tensor():
    # per-channel scales (PTQ's default) turned K shared values into up to K per channel
    model = _bn_net()
    nc.cluster_weights_(model, clusters=K, fold_bn=True, exclude=["8"])
    assert _per_channel_distinct(model) > K  # what a per-channel plan would give this layer
    qmodel = nc.quantize(model, calib_loader=[(X, None)], bits=8, act_bits=None)
    layers = {n: q for n, q in quant_layers(qmodel).items()}
    assert layers["0"].weight_fq.spec.granularity == "per_tensor"
    assert layers["8"].weight_fq.spec.granularity == "per_channel"  # not clustered: the default
    dist = _quantized_distinct(qmodel)
    assert dist["0"] <= K and dist["3"] <= K


def test_qat_step_after_a_ptq_step_starts_from_its_scales_and_keeps_k_values():
    # E5's QAT + PTQ + clustering: quantize/qat on a PTQ model raised "layer pattern '0' matches no
    # quantizable layer"; it now trains the PTQ model with its calibrated (here frozen) scales
    model = _bn_net()
    nc.cluster_weights_(model, clusters=K, fold_bn=True, exclude=["8"])
    loader = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(3)]
    data = MethodData(train_loader=loader, calib_loader=loader)
    from netcompress.quantization.ptq import PTQStaticConfig

    ptq = apply(model, PTQStaticConfig(bits=8, act_bits=8), data).model
    scales = {n: q.weight_fq.scale.clone() for n, q in quant_layers(ptq).items()}
    qat = apply(ptq, QATConfig(epochs=1, lr=0.05, freeze_scales=True, progress=False), data)
    assert qat.summary["from_ptq"] is True and qat.summary["grid_clustered"] == ["0", "3"]
    for name, q in quant_layers(qat.model).items():
        assert torch.equal(q.weight_fq.scale, scales[name])  # frozen: PTQ's scales, untouched
    dist = _quantized_distinct(qat.model)
    assert dist["0"] <= K and dist["3"] <= K
    assert quant_layers(ptq)["0"].layer.weight is not quant_layers(qat.model)["0"].layer.weight  # a copy


@pytest.mark.parametrize("reduction", ["mean", "sqrt", "sum"])
def test_cluster_preserving_gradient_is_the_cluster_mean_or_sum(reduction):
    # "sum" is the gradient with respect to the shared value (Deep Compression); "mean" moves a centroid
    # 1/size as fast, so fine-tuning barely trains clustered layers; "sqrt" = sum / sqrt(size)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    nc.cluster_weights_(model, clusters=3)
    layer = model[0]
    grad = torch.randn(5, 6)
    layer.weight.grad = grad.clone()
    ClusterPreserving(reduction).after_backward(model)
    idx = layer.weight_indices.long()
    for c in range(3):
        members = grad[idx == c]
        want = {"sum": members.sum(), "mean": members.mean(), "sqrt": members.sum() / members.numel() ** 0.5}
        want = want[reduction]
        assert members.numel() > 1  # the three reductions differ
        assert torch.allclose(layer.weight.grad[idx == c], want.expand(members.numel()), atol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        ClusterPreserving("max")
