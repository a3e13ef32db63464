"""Kernel-level pruning (``prune_kernels_``): exact counts, the largest kernels kept, masks that only grow,
composition with unstructured pruning, clear errors, and the file bytes the structure is for."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.pruning.masks import remove_masks
from tests.fresh_process import assert_fresh_load_equal


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 1),  # 1 x 1: no spatial kernel
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def _zero_kernels(weight: torch.Tensor) -> torch.Tensor:
    return ~(weight != 0).flatten(2).any(dim=2)


def test_exact_kernel_count_and_the_largest_kernels_kept() -> None:
    model = _net()
    norms = model[2].weight.detach().flatten(2).norm(dim=2).flatten()
    summary = nc.prune_kernels_(model, amount=0.75)
    assert summary["skipped"] == {"4": "1 x 1 kernel: kernel pruning is unstructured pruning there"}
    assert set(summary["per_layer"]) == {"0", "2"}
    zero = _zero_kernels(model[2].weight)
    assert int(zero.sum()) == 96  # round(0.75 * 16 * 8)
    # whole kernels: every kept kernel keeps all 9 weights, and they are the 32 largest by L2 norm
    assert int((model[2].weight != 0).sum()) == 32 * 9
    assert torch.equal(~zero.flatten(), torch.isin(torch.arange(128), norms.argsort(descending=True)[:32]))
    assert summary["per_layer"]["2"] == {"kernel_sparsity": 0.75, "sparsity": 0.75}
    assert int(_zero_kernels(model[0].weight).sum()) == 18  # round(0.75 * 24)
    assert int((model[4].weight == 0).sum()) == 0 and int((model[7].weight == 0).sum()) == 0


def test_masks_only_grow_and_pruned_outputs_equal_a_zeroed_copy() -> None:
    model = _net()
    nc.prune_kernels_(model, amount=0.5, include=["2"])
    first = _zero_kernels(model[2].weight).clone()
    again = nc.prune_kernels_(model, amount=0.25, include=["2"])  # below what is masked: nothing changes
    assert again["per_layer"]["2"]["kernel_sparsity"] == 0.5
    assert torch.equal(_zero_kernels(model[2].weight), first)
    nc.prune_kernels_(model, amount=0.75, include=["2"])
    now = _zero_kernels(model[2].weight)
    assert int(now.sum()) == 96 and bool(now[first].all())  # the earlier kernels stay masked
    # the masks hold through a training step, and the masked model is the zeroed plain model
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x = torch.randn(4, 3, 8, 8)
    model(x).pow(2).mean().backward()
    opt.step()
    model(x)  # the masks are enforced before every forward (MaskKeeper would do it after each step)
    assert torch.equal(_zero_kernels(model[2].weight), now)
    plain = copy.deepcopy(model)
    remove_masks(plain)
    with torch.no_grad():
        plain[2].weight.mul_((~now)[:, :, None, None])
    assert torch.equal(model(x), plain(x))


def test_unstructured_after_kernels_thins_only_the_kept_kernels() -> None:
    model = _net()
    nc.prune_kernels_(model, amount=0.5, include=["2"])
    kept_kernels = ~_zero_kernels(model[2].weight)
    nc.prune_unstructured_(model, amount=0.9, scope="layer", include=["2"])
    weight = model[2].weight
    assert int((weight == 0).sum()) == round(0.9 * weight.numel())
    nonzero_kernels = (weight != 0).flatten(2).any(dim=2)
    assert not bool((nonzero_kernels & ~kept_kernels).any())  # no weight outside a kept kernel


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount": 1.0}, "must be below 1"),
        ({"amount": -0.1}, "amount=-0.1"),
        ({"amount": float("nan")}, "not a number"),
        ({"amount": "0.5"}, "must be a number"),
        ({"amount": 0.5, "include": ["4"]}, "no selected Conv2d has a spatial kernel"),
        ({"amount": 0.5, "include": ["nope"]}, "matches no Conv2d"),
        ({"amount": 0.5, "include": ["7"]}, "matches no Conv2d"),  # a Linear
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(kwargs, message) -> None:
    model = _net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=message):
        nc.prune_kernels_(model, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_kernel_structure_costs_fewer_position_bytes_and_reloads_exactly(tmp_path) -> None:
    """The same count of kept weights in a 64x64x3x3 conv: 88 % of the kernels first, then 92 % overall, against
    92 % unstructured alone; both clustered to 8 values (zero one of them)."""

    def conv(kernels: float) -> nn.Module:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1))
        if kernels:
            nc.prune_kernels_(model, amount=kernels)
        nc.prune_unstructured_(model, amount=0.92, scope="layer")
        nc.cluster_weights_(model, clusters=8, preserve_zeros=True)
        remove_masks(model)
        return model

    parts = {}
    for kernels in (0.0, 0.88):
        model = conv(kernels)
        assert int((model[0].weight != 0).sum()) == 2949  # 36,864 - round(0.92 * 36,864)
        summary = nc.save_compressed(model, tmp_path / f"k{kernels}.ncz")
        parts[kernels] = summary["parts"]
    # scattered: 5.1 bits per kept weight (1,864 B); in 492 kernels (6 kept weights each): 2.8 bits (1,041 B);
    # the indices cost a little more (979 against 841 B), the two together 25 % less
    assert parts[0.0]["positions"] > 1750 and parts[0.88]["positions"] < 0.6 * parts[0.0]["positions"]
    total = {k: p["positions"] + p["indices"] for k, p in parts.items()}
    assert total[0.88] < 0.8 * total[0.0]
    x = torch.randn(2, 64, 6, 6)
    with torch.no_grad():
        expected = model(x)
    assert_fresh_load_equal(tmp_path / "k0.88.ncz", x, expected, tmp_path)
