"""Depth pruning: a residual branch with an identity shortcut removed whole (issue 18, session 13).

The removed model must equal the original with that branch's output replaced by zeros (here: its last
BatchNorm's weight and bias zeroed, so the branch outputs exactly 0), in PyTorch and in ONNX Runtime; a
projection-shortcut block, the residual stream's own group and a branch whose value feeds anything but the
residual add are not removable. The latency search's timing is a fake clock (no wall-clock time read).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.export import OrtModel, export_onnx
from netcompress.pruning import latency_table
from netcompress.pruning.auto import prune_to_target
from netcompress.pruning.branch_removal import find_branch, removable_branches, remove_branches_
from netcompress.pruning.graph_tracing import build_channel_graph
from netcompress.pruning.importance import layer_scores, unit_scores
from netcompress.pruning.latency_search import Variants

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the shortcut (identity, or 1x1 conv + BN when ``project``), then ReLU;
    with ``side`` the branch's inner activation also feeds a 1x1 conv added to the output (not removable)."""

    def __init__(self, c_in: int, c_out: int, *, stride: int = 1, project: bool = False, side: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
            if project
            else nn.Identity()
        )
        self.side = nn.Conv2d(c_out, c_out, 1) if side else None
        self.relu2 = nn.ReLU()

    def forward(self, x):
        h = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(h)) + self.shortcut(x))
        return out + self.side(h) if self.side is not None else out


class Branch(nn.Sequential):
    """A branch with its add in the parent's forward (the owner is one module further out)."""


class OuterAdd(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.branch = Branch(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.branch(x)


class TinyResNet(nn.Module):
    def __init__(self, *, side: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = Block(8, 8)
        self.block2 = Block(8, 16, stride=2, project=True)
        self.block3 = Block(16, 16, side=side)
        self.outer = OuterAdd(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)
        for m in self.modules():  # non-trivial BN statistics, so a wrong removal shows in the outputs
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.outer(self.block3(self.block2(self.block1(self.stem(x)))))
        return self.fc(self.pool(x).flatten(1))


def _zeroed(model: nn.Module, owners: list[str]) -> nn.Module:
    """The reference: each branch's output made exactly zero (last BN's scale and shift, or last conv's weights)."""
    ref = copy.deepcopy(model)
    for owner in owners:
        last = ref.get_submodule(owner + (".bn2" if owner.startswith("block") else ".branch.2"))
        nn.init.zeros_(last.weight), nn.init.zeros_(last.bias)
    return ref


def _branches(model: nn.Module) -> dict[str, object]:
    graph = build_channel_graph(model, X)
    return {b.owner: b for b in removable_branches(model, graph, X).values()}


def test_only_identity_shortcut_branches_are_removable() -> None:
    model = TinyResNet().eval()
    found = _branches(model)
    assert sorted(found) == ["block1", "block3", "outer"]  # block2 has a projection shortcut
    assert found["block1"].modules == (
        "block1.bn1",
        "block1.bn2",
        "block1.conv1",
        "block1.conv2",
        "block1.relu1",
    )
    assert found["outer"].modules == ("outer.branch.0", "outer.branch.1", "outer.branch.2")
    with pytest.raises(UnsupportedModelError, match="projection shortcut is not removable"):
        find_branch(model, ["block2.conv1"], ["block2.bn1", "block2.conv1", "block2.conv2"], X)
    with pytest.raises(UnsupportedModelError, match="both operands"):  # the residual stream's own group
        find_branch(model, ["stem.0", "block1.conv2"], ["stem.0", "stem.1", "block1.conv2", "block1.bn2"], X)


@pytest.mark.parametrize("owners", [["block1"], ["block3"], ["outer"], ["block1", "block3", "outer"]])
def test_removed_model_equals_the_zeroed_branch_model(owners: list[str]) -> None:
    model = TinyResNet().eval()
    found = _branches(model)
    small = remove_branches_(copy.deepcopy(model), [found[o] for o in owners]).eval()
    with torch.no_grad():
        expected, got = _zeroed(model, owners)(X), small(X)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (got - model(X)).abs().max() > 1e-3  # the branches mattered: the check can fail
    removed = {name for o in owners for name in found[o].modules}
    params = sum(
        p.numel() for n, m in model.named_modules() if n in removed for p in m.parameters(recurse=False)
    )
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in model.parameters()) - params
    assert not any(n in removed for n, _ in small.named_modules())  # the modules are gone, not masked
    assert small.fc.out_features == 5


def test_removed_model_exports_to_onnx_and_runs_the_same(tmp_path) -> None:
    model = TinyResNet().eval()
    found = _branches(model)
    small = remove_branches_(copy.deepcopy(model), [found["block1"], found["outer"]]).eval()
    export_onnx(small, tmp_path / "small.onnx", X[:1], check=True)
    with torch.no_grad():
        torch.testing.assert_close(OrtModel(tmp_path / "small.onnx")(X), small(X), rtol=1e-4, atol=1e-5)
    import onnx

    convs = [n for n in onnx.load(str(tmp_path / "small.onnx")).graph.node if n.op_type == "Conv"]
    assert len(convs) == 1 + 0 + 3 + 2 + 0  # stem, block1 gone, block2 (2 + projection), block3, outer gone


def test_a_branch_feeding_anything_but_the_residual_add_is_refused() -> None:
    model = TinyResNet(side=True).eval()
    assert "block3" not in _branches(model)
    with pytest.raises(UnsupportedModelError, match="also feeds side"):
        find_branch(model, ["block3.conv1"], ["block3.bn1", "block3.conv1", "block3.conv2"], X)


def test_width_pruning_and_removal_together_equal_the_zeroed_branch_of_the_width_pruned_model() -> None:
    model = TinyResNet().eval()
    graph = build_channel_graph(model, X)
    found = removable_branches(model, graph, X)
    scores = unit_scores(graph, layer_scores("group_l2", model, graph))
    candidates = {g.id: scores[g.id] for g in graph.prunable_groups()}
    variants = Variants.of(model, graph, candidates, [1.0, 0.5], round_to=1, min_channels=1, branches=found)
    by_owner = {b.owner: label for label, b in variants.branches.items()}
    assert all(variants.kept[label][-1] == 0 for label in by_owner.values())
    others = [label for label in variants.kept if label not in variants.branches]
    assert all(variants.kept[label][-1] == variants.kept[label][-2] > 0 for label in others)
    residual = next(label for label in others if "block1.conv2" in label)  # the 16x16 stream: 8 -> 4
    state = {residual: 1, by_owner["block1"]: 2, by_owner["outer"]: 2}
    small = variants.build(state).eval()
    width_only = variants.build({residual: 1}).eval()
    with torch.no_grad():
        torch.testing.assert_close(small(X), _zeroed(width_only, ["block1", "outer"])(X), rtol=0, atol=1e-6)
    assert small.block2.conv1.in_channels == 4 and not hasattr(small.block1, "conv1")


class CostClock:
    """``2 ms + 0.01 ms`` per conv MAC-unit (in x out channels x k^2 / stride^2) of the model's convolutions."""

    @staticmethod
    def ms(model: nn.Module) -> float:
        return 2.0 + sum(
            0.01 * m.in_channels * m.out_channels * m.kernel_size[0] ** 2 / m.stride[0] ** 2
            for m in model.modules()
            if isinstance(m, nn.Conv2d)
        )

    def __call__(self, models, example_inputs, spec) -> dict[str, float]:
        return {name: self.ms(m) for name, m in models.items()}


def test_latency_search_offers_removal_measured_and_scored_like_any_width(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(latency_table, "time_deployed", CostClock())
    model = TinyResNet().eval()
    gen = torch.Generator().manual_seed(1)
    loader = [
        (torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 5, (8,), generator=gen)) for _ in range(2)
    ]
    small, summary = prune_to_target(
        model, X, target="latency", runtime="torch", reduction=2.0, widths=[1.0, 0.5], round_to=1,
        method="sensitivity", loader=loader, remove_branches=True, cache_dir=tmp_path,
    )  # fmt: skip
    entries = {(e["group"], e["kept"]): e for e in summary["cost_table"]["entries"]}
    removal = {g: e for (g, k), e in entries.items() if k == 0}
    assert sorted(summary["removable_branches"].values()) == ["block1", "block3", "outer"]
    assert sorted(removal) == sorted(summary["removable_branches"])  # measured like any width
    for label, entry in removal.items():  # the cost table's entry is the removed model's measured cost
        alone = remove_branches_(
            copy.deepcopy(model), [_branches(model)[summary["removable_branches"][label]]]
        )
        assert entry["cost"] == pytest.approx(CostClock.ms(alone)) and entry["width"] == 0.0
        half = next(e for (g, k), e in entries.items() if g == label and k > 0)
        assert entry["proxy_lost"] >= half["proxy_lost"]  # the sensitivity proxy scores it (running max)
    assert summary["met"] is True and CostClock.ms(model) / CostClock.ms(small) >= 2.0 / 1.03
    assert summary["removed_branches"], "the cheapest way to 2x here removes a branch"
    for owner in summary["removed_branches"]:
        assert isinstance(small.get_submodule(owner), torch.fx.GraphModule)
    assert small.fc.out_features == 5 and small(X).shape == (4, 5)


def test_remove_branches_is_validated() -> None:
    with pytest.raises(ConfigError, match="remove_branches"):
        prune_to_target(TinyResNet().eval(), X, target="latency", remove_branches="yes")
    with pytest.raises(ConfigError, match="remove_branches"):
        prune_to_target(TinyResNet().eval(), X, target="latency", remove_branches=True, quantize="joint")
