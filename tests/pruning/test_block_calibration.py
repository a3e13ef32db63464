"""Block-wise calibration: the same masks and weights as whole-model passes on tiny BERT and Llama, each
block run a number of times linear in depth, keyword arguments replayed, the fallback named."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.pruning import prune_n_m_, prune_sparsegpt_, prune_wanda_

VERBS = {
    "wanda": lambda m, b, c: prune_wanda_(m, b, amount=0.5, calibration=c),
    "sparsegpt-2:4": lambda m, b, c: prune_sparsegpt_(m, b, n=2, m=4, calibration=c),
    "n_m-wanda": lambda m, b, c: prune_n_m_(m, b, importance="wanda", calibration=c),
}


def _text_batches(count: int = 2) -> list[dict[str, torch.Tensor]]:
    batches = []
    for i in range(count):
        g = torch.Generator().manual_seed(i)
        mask = torch.ones(4, 10, dtype=torch.long)
        mask[:2, 7:] = 0  # padding: the attention mask must be replayed to every block
        batches.append({"input_ids": torch.randint(0, 99, (4, 10), generator=g), "attention_mask": mask})
    return batches


def _bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40, vocab_size=99
    )
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def _llama() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, vocab_size=99,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("verb", list(VERBS))
@pytest.mark.parametrize(
    ("make", "container", "layers"), [(_bert, "encoder.layer", 13), (_llama, "model.layers", 15)]
)
def test_blocks_give_the_masks_and_weights_of_whole_model_passes(make, container, layers, verb):
    model, blocks = make(), make()
    slow = VERBS[verb](model, _text_batches(), "model")
    fast = VERBS[verb](blocks, _text_batches(), "auto")
    assert fast["calibration"] == "blocks" and fast["calibration_blocks"] == f"{container} (2 blocks)"
    assert slow["calibration"] == "model" and slow["calibration_note"] == "model path asked for"
    state, other = model.state_dict(), blocks.state_dict()
    masks = [k for k in state if k.endswith("_mask")]
    assert len(masks) == layers - len(fast["skipped"]) and fast["per_layer"] == slow["per_layer"]
    for key, value in state.items():
        if key.endswith("_mask"):
            assert torch.equal(value, other[key]), key
        else:
            assert torch.allclose(value, other[key], atol=1e-6), key
    if verb == "sparsegpt-2:4":
        assert fast["errors"] == pytest.approx(slow["errors"], rel=1e-6)


class _Block(nn.Module):
    """Two Linears and a residual; the keyword ``gate`` (like an attention mask) scales the update."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.calls = 0

    def forward(self, x: torch.Tensor, *, gate: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + gate * self.fc2(torch.relu(self.fc1(x)))


class _Deep(nn.Module):
    def __init__(self, depth: int, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(depth)
        self.embed = nn.Linear(4, width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, gate=gate)
        return self.head(h)


def _deep_batches(count: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [
        {"x": torch.randn(6, 5, 4, generator=g), "gate": torch.rand(6, 5, 1, generator=g)}
        for _ in range(count)
    ]


@pytest.mark.parametrize("depth", [2, 4, 8])
def test_each_block_runs_a_number_of_times_linear_in_depth(depth):
    batches = _deep_batches()
    fast, slow = _Deep(depth), _Deep(depth)
    summary = prune_sparsegpt_(fast, batches, amount=0.5, calibration="auto")
    prune_sparsegpt_(slow, batches, amount=0.5, calibration="model")
    assert summary["calibration_blocks"] == f"blocks ({depth} blocks)"
    b = len(batches)
    # probe (1 batch) + capture (b) + 2 groups (fc1, fc2) x b + outputs for the next block (b, not the
    # last) + the head's whole-model pass (b): at most 5b + 1, whatever the depth
    assert [blk.calls for blk in fast.blocks] == [5 * b + 1] * (depth - 1) + [4 * b + 1]
    # whole-model passes: block 0 runs once per pass of every later group: 1 + b * (2 * depth + 1)
    assert slow.blocks[0].calls == 1 + b * (2 * depth + 1)
    for (key, value), other in zip(fast.state_dict().items(), slow.state_dict().values()):
        assert torch.equal(value, other) if key.endswith("_mask") else torch.allclose(value, other, atol=1e-6)


class _Unchained(nn.Module):
    """Every block reads the embedding, not the previous block: the blocks cannot be fed forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(block(x) for block in self.blocks)


def test_models_whose_blocks_cannot_be_chained_fall_back_and_say_why():
    batches = [torch.randn(5, 8) for _ in range(2)]
    summary = prune_wanda_(_Unchained(), batches, amount=0.5)
    assert summary["calibration"] == "model"
    assert (
        summary["calibration_note"] == "block blocks.1 does not take block blocks.0's output as an argument"
    )
    assert summary["per_layer"] == {f"blocks.{i}": 0.5 for i in range(3)}
    with pytest.raises(
        ConfigError, match="calibration='blocks': .* blocks.1 does not take block blocks.0's output"
    ):
        prune_wanda_(_Unchained(), batches, calibration="blocks")
    flat = nn.Sequential(nn.Linear(8, 8))  # a single stage: no blocks to cut
    assert prune_wanda_(flat, batches)["calibration_note"].startswith("no nn.ModuleList/nn.Sequential holds")


def test_a_cache_object_among_a_blocks_arguments_falls_back():
    class Cache:  # stands for a key/value cache that a replayed call would grow
        pass

    class Model(_Deep):
        def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
            h, cache = self.embed(x), Cache()
            for block in self.blocks:
                h = block(h, gate=gate, cache=cache)
            return self.head(h)

    class Block(_Block):
        def forward(self, x: torch.Tensor, *, gate: torch.Tensor, cache: object = None) -> torch.Tensor:
            return super().forward(x, gate=gate)

    model = Model(2)
    model.blocks = nn.ModuleList(Block(8) for _ in range(2))
    summary = prune_wanda_(model, _deep_batches(), amount=0.5)
    assert summary["calibration"] == "model"
    assert (
        summary["calibration_note"] == "block blocks.0 is called with a Cache (state a replay would change)"
    )


def test_sequential_stages_are_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    reference = copy.deepcopy(model)
    batches = [torch.randn(6, 8) for _ in range(2)]
    fast = prune_sparsegpt_(model, batches, amount=0.5)
    slow = prune_sparsegpt_(reference, batches, amount=0.5, calibration="model")
    assert fast["calibration_blocks"] == "(model) (5 blocks)" and fast["errors"] == pytest.approx(
        slow["errors"]
    )
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values())
    )
