"""Channel pruning on random architectures: the pruned model computes what the masked original computes
(removed channels' contributions zeroed), or a clear error names what it cannot handle. Never a silently
wrong model."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.pruning import plan_channel_pruning, prune_channels

# ---- random architectures ----
SIZE = 6  # height and width of every feature map
NUM_CLASSES = 5


@dataclasses.dataclass(frozen=True)
class Step:
    op: str
    inputs: tuple[int, ...]
    channels: int
    name: str = ""


class RandomNet(nn.Module):
    def __init__(self, in_channels: int, program: list[Step], head: str) -> None:
        super().__init__()
        self.program = program
        self.head = head
        self.layers = nn.ModuleDict()
        channels = [in_channels]
        for i, step in enumerate(program):
            c_in = channels[step.inputs[0]]
            if step.op == "conv1":
                self.layers[f"n{i}"] = nn.Conv2d(c_in, step.channels, 1)
            elif step.op == "conv3":
                self.layers[f"n{i}"] = nn.Conv2d(c_in, step.channels, 3, padding=1, bias=False)
            elif step.op == "depthwise":
                self.layers[f"n{i}"] = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in)
            elif step.op == "grouped":
                self.layers[f"n{i}"] = nn.Conv2d(c_in, step.channels, 3, padding=1, groups=2)
            elif step.op == "bn":
                self.layers[f"n{i}"] = nn.BatchNorm2d(c_in)
            elif step.op == "se":
                hidden = max(1, c_in // 2)
                self.layers[f"n{i}"] = nn.Sequential(
                    nn.AdaptiveAvgPool2d(1),
                    nn.Conv2d(c_in, hidden, 1),
                    nn.ReLU(),
                    nn.Conv2d(hidden, c_in, 1),
                    nn.Sigmoid(),
                )
            channels.append(step.channels)
        last = channels[-1]
        if head == "pool":
            self.classifier = nn.Linear(last, NUM_CLASSES)
        else:
            self.classifier = nn.Linear(last * SIZE * SIZE, NUM_CLASSES)
        self.final_channels = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = [x]
        for i, step in enumerate(self.program):
            a = values[step.inputs[0]]
            if step.op in ("conv1", "conv3", "depthwise", "grouped", "bn"):
                y = self.layers[f"n{i}"](a)
            elif step.op == "relu":
                y = torch.relu(a)
            elif step.op == "add":
                y = a + values[step.inputs[1]]
            elif step.op == "concat":
                y = torch.cat([a, values[step.inputs[1]]], dim=1)
            elif step.op == "se":
                y = a * self.layers[f"n{i}"](a)
            else:  # pragma: no cover - the strategy makes only the ops above
                raise ValueError(step.op)
            values.append(y)
        out = values[-1]
        out = out.mean(dim=(2, 3)) if self.head == "pool" else torch.flatten(out, 1)
        return self.classifier(out)


@st.composite
def random_nets(draw: st.DrawFn, *, max_steps: int = 9) -> RandomNet:
    in_channels = draw(st.integers(1, 3))
    channels = [in_channels]
    program: list[Step] = []
    # start with a conv so there is something to prune
    program.append(Step("conv3", (0,), draw(st.sampled_from([4, 6, 8]))))
    channels.append(program[-1].channels)
    for _ in range(draw(st.integers(1, max_steps))):
        src = draw(st.integers(1, len(channels) - 1))
        c = channels[src]
        op = draw(
            st.sampled_from(["conv1", "conv3", "depthwise", "grouped", "bn", "relu", "add", "concat", "se"])
        )
        if op in ("conv1", "conv3"):
            step = Step(op, (src,), draw(st.sampled_from([2, 4, 6, 8])))
        elif op == "grouped":
            if c % 2:
                continue
            step = Step(op, (src,), draw(st.sampled_from([2, 4, 8])))
        elif op in ("depthwise", "bn", "relu", "se"):
            step = Step(op, (src,), c)
        elif op == "add":
            partners = [i for i in range(1, len(channels)) if channels[i] == c and i != src]
            if not partners:
                continue
            step = Step(op, (src, draw(st.sampled_from(partners))), c)
        else:  # concat
            other = draw(st.integers(1, len(channels) - 1))
            step = Step(op, (src, other), c + channels[other])
        program.append(step)
        channels.append(step.channels)
    head = draw(st.sampled_from(["pool", "flatten"]))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    net = RandomNet(in_channels, program, head)
    with torch.no_grad():  # BN statistics that are not the identity, so a wrong slice shows
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


# ---- the property ----

EXAMPLES = int(os.environ.get("NETCOMPRESS_FUZZ_EXAMPLES", "40"))


def masked_copy(model: nn.Module, keep: dict[str, dict[str, list[int] | None]]) -> nn.Module:
    """The original with every removed input channel's weights zeroed: what pruning must equal."""
    import copy

    masked = copy.deepcopy(model)
    with torch.no_grad():
        for name, kept in keep.items():
            layer = masked.get_submodule(name)
            if kept.get("in") is None or not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue
            groups = getattr(layer, "groups", 1)
            per_group_in = layer.weight.shape[1]
            per_group_out = layer.weight.shape[0] // groups
            for c in sorted(set(range(per_group_in * groups)) - set(kept["in"])):
                g = c // per_group_in  # input channel c feeds only the outputs of its group
                layer.weight[g * per_group_out : (g + 1) * per_group_out, c % per_group_in] = 0
    return masked


def check_pruned_equals_masked(net: nn.Module, ratio: float) -> str:
    x = torch.randn(3, net.layers["n0"].in_channels, SIZE, SIZE)
    try:
        plan = plan_channel_pruning(net, x, ratio=ratio)
        small = prune_channels(net, x, ratio=ratio)
    except (UnsupportedModelError, ConfigError) as exc:
        assert str(exc), "an error without a message"
        return f"refused: {str(exc)[:60]}"
    with torch.no_grad():
        expected = masked_copy(net, plan.keep_indices())(x)
        got = small.eval()(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    before, after = (sum(p.numel() for p in m.parameters()) for m in (net, small))
    assert after <= before
    return "pruned" if after < before else "nothing to prune"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=random_nets(), ratio=st.sampled_from([0.25, 0.5, 0.75]))
def test_random_nets_prune_exactly_or_refuse_clearly(net, ratio):
    event(check_pruned_equals_masked(net, ratio))


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=random_nets(max_steps=14), ratio=st.sampled_from([0.25, 0.5, 0.75]))
def test_random_nets_long_run(net, ratio):
    event(check_pruned_equals_masked(net, ratio))
