"""Channel pruning of forwards that check their input's type (Stable-Baselines3's ``preprocess_obs`` asserts
``isinstance(obs, torch.Tensor)``) or build a ``torch.distributions`` object (its argument validation branches on
tensor data). Traced with values on the example input, a module whose line ``isinstance(x, torch.Tensor)`` failed
is traced again with that check answered from the example value, and distribution validation is off while
tracing: a plain Linear graph behind such a check prunes, and pruned == masked original.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError
from tests.channel_checks import pruned_equals_masked

X = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))


class CheckedMLP(nn.Module):
    """An SB3-style Q-network: the observation is asserted to be a tensor, cast, then an MLP."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        assert isinstance(obs, torch.Tensor), f"Expecting a torch Tensor, but got {type(obs)}"
        return self.net(obs.float())


def test_an_isinstance_assert_on_the_input_no_longer_stops_channel_pruning() -> None:
    small = pruned_equals_masked(CheckedMLP(), X)
    assert small.net[0].out_features < 32 and small.net[4].out_features == 4


def test_isinstance_on_a_traced_value_answers_as_the_example_value() -> None:
    class Branchy(CheckedMLP):
        def forward(self, obs: torch.Tensor) -> torch.Tensor:  # the tensor branch is the one the model takes
            return self.net(obs) if isinstance(obs, torch.Tensor) else self.net(torch.as_tensor(obs))

    pruned_equals_masked(Branchy(), X)


def test_a_distribution_built_in_forward_traces_and_its_inputs_stay_whole() -> None:
    """Categorical(logits=...) normalises over the actions (logsumexp over the last dim): the action layer's
    outputs are kept whole, the hidden layers prune."""

    class Policy(CheckedMLP):
        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return torch.distributions.Categorical(logits=self.net(obs)).logits

    small = pruned_equals_masked(Policy(), X)
    assert small.net[4].out_features == 4 and small.net[2].out_features < 32


def test_a_policy_whose_log_prob_broadcasts_is_refused_by_op() -> None:
    class Sampling(CheckedMLP):
        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            dist = torch.distributions.Categorical(logits=self.net(obs))
            return dist.log_prob(dist.logits.argmax(dim=1))

    with pytest.raises(UnsupportedModelError, match=r"channel pruning cannot handle call_function 'getitem'.*Ellipsis"):
        nc.prune_channels(Sampling().eval(), X, ratio=0.3)


@pytest.mark.parametrize("kind", ["dqn", "td3"])
def test_sb3_q_network_and_td3_actor_prune(kind: str) -> None:
    pytest.importorskip("stable_baselines3")
    import numpy as np
    from gymnasium import spaces
    from stable_baselines3.common.torch_layers import FlattenExtractor
    from stable_baselines3.dqn.policies import QNetwork
    from stable_baselines3.td3.policies import Actor

    torch.manual_seed(0)
    vec = spaces.Box(-1.0, 1.0, (8,), dtype=np.float32)
    ext = FlattenExtractor(vec)
    if kind == "dqn":
        model = QNetwork(vec, spaces.Discrete(4), ext, 8, net_arch=[32, 32])
    else:
        model = Actor(vec, spaces.Box(-1.0, 1.0, (3,), dtype=np.float32), [32, 32], ext, 8)
    pruned_equals_masked(model, X)
