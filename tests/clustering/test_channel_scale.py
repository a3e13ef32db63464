"""BN as a float per-channel scale (bn_to_channel_scale_): clustering scale-free weights (issue 16)."""

from __future__ import annotations

import torch
from torch import nn

import netcompress as nc
from netcompress.clustering import ChannelScale, ClusterPreserving, bn_to_channel_scale_
from netcompress.clustering.channel_scale import channel_rms
from netcompress.export.compressed_file import load_compressed, round_dense_, save_compressed
from netcompress.models.resnet import cifar_resnet20
from tests.fresh_process import assert_fresh_load_equal


def _trained_like_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = cifar_resnet20(width=0.5)
    with torch.no_grad():  # BN statistics and affines of a trained net, channel magnitudes that differ
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.2, 3.0)
                m.weight.uniform_(0.3, 2.0)
                m.bias.normal_(0, 0.3)
            elif isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.rand(m.weight.shape[0], 1, 1, 1) * 4 + 0.1)
    return model.eval()


def test_same_function_scale_free_channels_and_k_values_per_layer():
    model = _trained_like_resnet()
    nc.prune_unstructured_(model, amount=0.7, scope="layer")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    pairs = bn_to_channel_scale_(model)
    assert len(pairs) == 21 and ["conv1", "bn1"] in pairs  # 19 convs + 2 shortcut convs, each with its BN
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, ChannelScale) for m in model.modules()) == 21
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            assert torch.allclose(
                channel_rms(module.weight), torch.ones(module.weight.shape[0]), atol=1e-5
            ), name
            assert float((module.weight == 0).float().mean()) >= 0.69  # pruned zeros stayed zero
    nc.cluster_weights_(model, clusters=8, preserve_zeros=True)
    # one fine-tuning step moves the float scales and keeps <= 8 shared values (zero included) per layer
    scales = [m.weight.detach().clone() for m in model.modules() if isinstance(m, ChannelScale)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hook = ClusterPreserving("mean")
    model.train()
    for _ in range(2):
        loss = model(x).logsumexp(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        hook.after_backward(model)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        model(x)  # the sharing hooks snap on the next forward
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            assert module.weight.detach().unique().numel() <= 8, name
    moved = [m.weight.detach() for m in model.modules() if isinstance(m, ChannelScale)]
    assert any(not torch.equal(a, b) for a, b in zip(scales, moved, strict=True))


def test_scaled_clustered_file_loads_exactly_in_a_fresh_process(tmp_path):
    model = _trained_like_resnet()
    nc.prune_unstructured_(model, amount=0.8, scope="layer")
    bn_to_channel_scale_(model)
    nc.cluster_weights_(model, clusters=8, preserve_zeros=True)
    x = torch.randn(2, 3, 32, 32)
    summary = save_compressed(model, tmp_path / "m.ncz", example_inputs=x, dense_dtype="float16")
    scale_names = {
        f"{n}.{p}"
        for n, m in model.named_modules()
        if isinstance(m, ChannelScale)
        for p in ("weight", "bias")
    }
    assert scale_names <= set(summary["rounded"])  # the float scales are the dense part, in float16
    round_dense_(model, summary["rounded"])
    with torch.no_grad():
        expected = model(x)
    assert_fresh_load_equal(tmp_path / "m.ncz", x, expected, tmp_path)
    assert isinstance(load_compressed(tmp_path / "m.ncz").bn1, ChannelScale)


def test_a_model_without_batchnorm_is_left_alone():
    model = nn.Sequential(nn.Linear(4, 3))
    assert bn_to_channel_scale_(model) == []
    assert isinstance(model[0], nn.Linear)
