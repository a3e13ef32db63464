"""Channel pruning of models with nn.Embedding / nn.EmbeddingBag (zoo round 4, session 12): the tables were
refused ("cannot handle module of type EmbeddingBag"), so no layer of a recommender could be pruned. A table is
now a source whose columns are kept whole; the layers after it prune. A layer whose weight another module shares
(a head tied to the embedding) keeps its channels whole: slicing it untied the weights silently."""

from __future__ import annotations

import torch
from torch import nn

import netcompress as nc
from netcompress.pruning import masked_reference
from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning


class Recommender(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.users = nn.EmbeddingBag(30, 8, mode="mean")
        self.items = nn.Embedding(40, 8)
        self.dense = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.top = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, bags, item, dense):
        return self.top(torch.cat([self.users(bags), self.items(item), self.dense(dense)], -1))


def test_embedding_tables_stay_whole_and_the_mlps_prune():
    torch.manual_seed(0)
    model = Recommender().eval()
    x = (torch.randint(0, 30, (4, 3)), torch.randint(0, 40, (4,)), torch.randn(4, 4))
    plan = plan_channel_pruning(model, x, ratio=0.5)
    small = apply_channel_plan(model, plan, x)
    assert small.dense[0].out_features == 8 and small.top[0].out_features == 8
    assert small.users.weight.shape == (30, 8) and small.items.weight.shape == (40, 8)
    # the tables' 16 columns are kept whole beside the dense MLP's pruned output in the concatenation
    assert small.dense[2].out_features == 4 and small.top[0].in_features == 16 + 4
    assert torch.allclose(small(*x), masked_reference(model, plan.keep_indices())(*x), atol=1e-6)


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.proj = nn.Linear(16, 16)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 20, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.relu(self.mid(torch.relu(self.proj(self.embed(ids))))))


def test_a_tied_head_keeps_its_channels_and_its_tie():
    torch.manual_seed(0)
    model, x = TiedLM().eval(), torch.randint(0, 20, (2, 7))
    plan = plan_channel_pruning(model, x, ratio=0.5)
    small = apply_channel_plan(model, plan, x)
    assert small.head.weight is small.embed.weight and small.embed.weight.shape == (20, 16)
    assert small.proj.out_features == 8 and small.mid.out_features == 16
    assert torch.allclose(small(x), masked_reference(model, plan.keep_indices())(x), atol=1e-6)
    reasons = " ".join(g.reason for g in plan.graph.groups)
    assert "layer 'head' shares its parameters with 'embed' (tied weights)" in reasons
    assert nc.prune_channels(model, x, ratio=0.5).head.weight.shape == (20, 16)


class DotRecommender(Recommender):
    """With a DLRM-style dot interaction of the two tables' rows: a sum over kept-whole channels."""

    def forward(self, bags, item, dense):
        u, i = self.users(bags), self.items(item)
        return self.top(torch.cat([u, i * (u * i).sum(-1, keepdim=True), self.dense(dense)], -1))


def test_a_dot_product_of_table_rows_does_not_stop_pruning():
    torch.manual_seed(0)
    model = DotRecommender().eval()
    x = (torch.randint(0, 30, (4, 3)), torch.randint(0, 40, (4,)), torch.randn(4, 4))
    plan = plan_channel_pruning(model, x, ratio=0.5)
    small = apply_channel_plan(model, plan, x)
    assert small.dense[0].out_features == 8 and small.top[0].out_features == 8
    assert torch.allclose(small(*x), masked_reference(model, plan.keep_indices())(*x), atol=1e-6)
