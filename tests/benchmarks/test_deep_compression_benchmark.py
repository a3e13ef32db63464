"""benchmarks/deep_compression.py: per-layer rates, geometric rounds, and stages that resume from the cache."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

dc = pytest.importorskip("deep_compression")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # first conv: 216 weights
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),  # big (>= 1,000): 1,152 weights
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),  # middle: 160 weights
    )


def _args(*extra: str):
    return dc.parse(["--rates", "0.5/0.8/0.9", "--big-size", "1000", "--rounds", "2", *extra])


def test_layer_rates_give_the_first_conv_the_big_layers_and_the_rest_their_rate() -> None:
    assert dc.layer_rates(_net(), _args()) == {"0": 0.5, "3": 0.9, "8": 0.8}


def _sparsity(model: nn.Module, name: str) -> float:
    weight = model.get_submodule(name).weight
    return float((weight == 0).sum()) / weight.numel()


def test_rounds_take_the_same_share_each_and_end_at_the_rate() -> None:
    model, args = _net(), _args()
    rates = dc.layer_rates(model, args)
    dc.structure(model, rates, 1, args)
    # round 1 of 2 keeps sqrt(1 - rate) of the weights: 1 - sqrt(0.1) = 0.684 of the big conv pruned
    assert _sparsity(model, "3") == pytest.approx(1 - 0.1**0.5, abs=1 / 1152)
    assert _sparsity(model, "0") == pytest.approx(1 - 0.5**0.5, abs=1 / 216)
    dc.structure(model, rates, 2, args)
    assert _sparsity(model, "3") == pytest.approx(0.9, abs=1 / 1152)
    assert _sparsity(model, "0") == pytest.approx(0.5, abs=1 / 216)
    assert _sparsity(model, "8") == pytest.approx(0.8, abs=1 / 160)


def test_kernel_rates_prune_whole_kernels_first_on_the_same_rounds() -> None:
    model, args = _net(), _args("--kernel-rates", "0/0.5/0.75")
    rates = dc.layer_rates(model, args)
    dc.structure(model, rates, 1, args)
    zero_kernels = ~(model[3].weight != 0).flatten(2).any(dim=2)
    assert int(zero_kernels.sum()) == round((1 - 0.25**0.5) * 128)  # round 1 of 2: half the log-share
    dc.structure(model, rates, 2, args)
    zero_kernels = ~(model[3].weight != 0).flatten(2).any(dim=2)
    assert int(zero_kernels.sum()) == 96  # 0.75 of the 8 x 16 kernels
    assert _sparsity(model, "3") == pytest.approx(0.9, abs=1 / 1152)  # then thinned to the weight rate
    assert not bool(((model[0].weight != 0).flatten(2).any(dim=2) == 0).any())  # first conv: kernel rate 0
    assert _sparsity(model, "8") == pytest.approx(0.8, abs=1 / 160)  # the Linear: no kernels, its own rate
    with pytest.raises(SystemExit, match="three numbers"):
        dc.layer_rates(model, _args("--kernel-rates", "0.5/1.2/0.1"), "0.5/1.2/0.1")


@pytest.mark.parametrize("bn", ["kept", "--fold-bn", "--channel-scale"])
def test_a_cached_stage_rebuilds_the_same_pruned_clustered_model(tmp_path, bn) -> None:
    args = _args("--clusters", "4", *([bn] if bn != "kept" else []))
    model = _net()
    rates = dc.layer_rates(model, args)
    for step in (1, 2):
        dc.structure(model, rates, step, args)
    with torch.no_grad():  # the trained stage differs from what pruning alone gives
        model[0].weight.mul_(1.5)
    dc.cluster(model, rates, args)
    run = dc.Run(tmp_path / "run", {"x": 1})
    run.save("cluster-a", model)

    again = _net()  # a fresh process: rebuild the structure, then load the stage
    for step in (1, 2):
        dc.structure(again, rates, step, args)
    dc.cluster(again, rates, args)
    assert dc.Run(tmp_path / "run", {"x": 1}).load("cluster-a", again)
    assert not run.load("cluster-b", copy.deepcopy(again))  # no such stage: nothing loaded
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(again.eval()(x), model.eval()(x))
    from netcompress.clustering import ChannelScale

    kind = {"kept": nn.BatchNorm2d, "--fold-bn": nn.Identity, "--channel-scale": ChannelScale}[bn]
    assert isinstance(again[1], kind) and isinstance(again[4], kind)
    for name in rates:
        layer = again.get_submodule(name)
        assert layer.weight.unique().numel() <= 4 and _sparsity(again, name) >= rates[name] - 0.01


def test_chunked_loader_covers_each_shuffle_once_and_repeats_after_a_resume() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.arange(50).float(), torch.arange(50))
    loader = dc.ChunkedLoader(DataLoader(data, batch_size=4), 3, seed=7)
    assert len(loader) == 5  # 13 batches in three parts: 4, 5, 4

    def seen(epoch: int) -> list[int]:
        loader.sampler.set_epoch(epoch)
        return [int(i) for _, y in loader for i in y]

    first, second = [seen(e) for e in range(3)], [seen(e) for e in range(3, 6)]
    assert sorted(sum(first, [])) == list(range(50)) == sorted(sum(second, []))
    assert [len(p) for p in first] == [16, 20, 14]
    assert sum(first, []) != sum(second, [])  # a new shuffle each epoch
    assert seen(4) == second[1]  # a resumed run draws the same part again


def test_channel_stage_halves_every_group_and_rebuilds_the_same_shapes(tmp_path) -> None:
    base = _net().eval()
    args = _args("--channel-ratio", "0.5")
    small = dc.channel_pruned(base, args.channel_ratio, torch.randn(1, 3, 8, 8))
    assert [small[0].out_channels, small[3].out_channels, small[8].in_features] == [4, 8, 8]
    # the largest-L1 filters stay: the first conv keeps its 4 largest filters, in order
    norms = base[0].weight.abs().sum(dim=(1, 2, 3))
    keep = sorted(norms.argsort(descending=True)[:4].tolist())
    assert torch.equal(small[0].weight, base[0].weight[keep])
    # rates are read on the smaller layers: conv 3 (8 x 4 x 9 = 288 weights) is no longer big
    assert dc.layer_rates(small, args) == {"0": 0.5, "3": 0.8, "8": 0.8}
    run = dc.Run(tmp_path / "run", {"x": 1})
    run.save("channels", small)
    again = dc.channel_pruned(base, args.channel_ratio, torch.randn(1, 3, 8, 8))
    assert run.load("channels", again)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(again.eval()(x), small.eval()(x))


def test_finish_without_a_test_loader_writes_the_file_and_reads_no_test_set(tmp_path) -> None:
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, TensorDataset

    import netcompress as nc

    base = _net().eval()
    args = _args("--clusters", "4", "--channel-scale", "--dense-dtype", "float16", "--no-test")
    assert args.no_test and {"no_test", "select_size"} <= dc.NOT_IN_KEY  # a cached run is chosen, then tested
    model = copy.deepcopy(base)
    rates = dc.layer_rates(model, args)
    for step in (1, 2):
        dc.structure(model, rates, step, args)
    dc.cluster(model, rates, args)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    bundle = SimpleNamespace(test=[(x[0], 0)])
    run = dc.Run(tmp_path / "run", {"x": 1})
    row = dc.finish(model.eval(), base, bundle, None, run, args, "cluster-a")
    assert "acc_test" not in row and "acc_test_reloaded" not in row
    path = tmp_path / "run" / "cluster-a.ncz"
    assert row["file_bytes"] == path.stat().st_size
    assert row["kept_weights"] == dc.nonzero_weights(model)
    assert dc.nonzero_weights(nc.load_compressed(path)) == row["kept_weights"]  # the file holds the model
    loader = DataLoader(TensorDataset(x, torch.tensor([0, 1, 2, 3])), batch_size=2)
    tested = dc.finish(model.eval(), base, bundle, loader, run, args, "cluster-b")
    assert tested["acc_test"] == tested["acc_test_reloaded"] and tested["file_bytes"] == row["file_bytes"]
