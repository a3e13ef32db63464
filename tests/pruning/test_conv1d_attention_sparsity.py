"""N:M, Wanda and SparseGPT on GPT-2's transposed Conv1D and nn.MultiheadAttention's in_proj/out_proj:
exact patterns per output row, sparsity per layer, masks equal to a by-hand reference on Linear equivalents
(each weight calibrated on inputs from the model pruned upstream), outputs equal, masks kept through fit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netcompress.pruning import prune_n_m_, prune_sparsegpt_, prune_wanda_
from netcompress.pruning.semi_structured import n_m_keep
from netcompress.pruning.sparsegpt import sparsegpt_prune
from netcompress.training import TrainConfig, fit


def _rows_keep(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Wanda's rule by hand: in every row of ``scores`` (out, in) the ``amount`` share of lowest is dropped."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    count = int(round(amount * scores.shape[1]))
    keep.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :count], False)
    return keep


def _norms(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).double().norm(dim=0)


def _pattern(matrix: torch.Tensor, m: int = 4) -> list[int]:
    """Non-zeros per group of m consecutive inputs of each output row of an (out, in) matrix."""
    return (matrix != 0).reshape(matrix.shape[0], -1, m).sum(-1).unique().tolist()


# --- GPT-2's Conv1D (weight stored (in, out)) ----------------------------------------------------------


def _gpt2(lm_head: bool = False) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=48,
        vocab_size=99,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    cls = transformers.GPT2LMHeadModel if lm_head else transformers.GPT2Model
    return cls(config).eval()


CONV1DS = [
    f"h.{i}.{name}" for i in range(2) for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
]


@pytest.mark.parametrize("lm_head", [False, True])
def test_gpt2_n_m_groups_run_along_the_input_axis_of_each_output_row(lm_head):
    model = _gpt2(lm_head)
    body = model.transformer if lm_head else model
    prefix = "transformer." if lm_head else ""
    originals = {n: body.get_submodule(n).weight.detach().clone() for n in CONV1DS}
    summary = prune_n_m_(model, n=2, m=4)
    assert summary["per_layer"] == {prefix + n: 0.5 for n in CONV1DS}
    tied = {"lm_head": "weight tied (transformer.wte.weight, lm_head.weight): a mask would prune every one of them; "
            "untie or exclude it"}  # fmt: skip
    assert summary["skipped"] == (tied if lm_head else {})
    for name, weight in originals.items():
        layer = body.get_submodule(name)
        assert layer.weight_mask.shape == weight.shape  # stored like the weight: (in, out)
        assert _pattern(layer.weight.T) == [2], name  # 2 of every 4 inputs of each output
        assert torch.equal(layer.weight_mask.T, n_m_keep(weight.T.abs(), 2, 4)), name


def _conv1d_and_linear() -> tuple[nn.Module, nn.Module, list[torch.Tensor]]:
    from_transformers = pytest.importorskip("transformers.pytorch_utils")
    torch.manual_seed(1)
    conv = from_transformers.Conv1D(12, 16)  # nf=12 outputs, nx=16 inputs: weight (16, 12)
    with torch.no_grad():
        conv.weight.normal_(0, 0.2)
        conv.bias.normal_(0, 0.1)
    linear = nn.Linear(16, 12)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    scale = torch.ones(16)
    scale[3] = 50.0  # input feature 3 is large: Wanda must keep the weights reading it
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(4, 5, 16, generator=g) * scale for _ in range(3)]
    return nn.Sequential(conv), nn.Sequential(linear), batches


@pytest.mark.parametrize(
    "verb",
    [
        lambda m, b: prune_wanda_(m, b, amount=0.5),
        lambda m, b: prune_n_m_(m, b, importance="wanda"),
        lambda m, b: prune_sparsegpt_(m, b, amount=0.5),
        lambda m, b: prune_sparsegpt_(m, b, n=2, m=4, block_size=8),
    ],
    ids=["wanda", "n_m-wanda", "sparsegpt", "sparsegpt-2:4"],
)
def test_conv1d_is_pruned_exactly_as_its_linear_equivalent(verb):
    conv, linear, batches = _conv1d_and_linear()
    s_conv, s_linear = verb(conv, batches), verb(linear, batches)
    assert torch.equal(conv[0].weight_mask, linear[0].weight_mask.T)
    assert torch.allclose(conv[0].weight, linear[0].weight.T, atol=1e-6)
    assert s_conv["per_layer"] == s_linear["per_layer"] and s_conv["per_layer"]["0"] == 0.5
    assert bool(conv[0].weight_mask[3].all())  # input feature 3 (dim 0 of the stored weight) kept
    x = torch.cat(batches)
    with torch.no_grad():  # the masked Conv1D == a Linear on the transposed, masked weight, by hand
        by_hand = F.linear(x, (conv[0].weight * conv[0].weight_mask).T, conv[0].bias)
        assert torch.allclose(conv(x), by_hand, atol=1e-5)
        assert torch.allclose(conv(x), linear(x), atol=1e-5)


# --- nn.MultiheadAttention inside nn.TransformerEncoderLayer ------------------------------------------


def _encoder(batch_first: bool) -> nn.TransformerEncoderLayer:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
    with torch.no_grad():
        layer.self_attn.in_proj_bias.normal_(0, 0.1)
    return layer.eval()


def _batches(batch_first: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    scale = torch.linspace(0.2, 3.0, 16)
    batches = [torch.randn(4, 6, 16, generator=g) * scale for _ in range(3)]
    return batches if batch_first else [b.transpose(0, 1) for b in batches]


def _by_hand(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The post-norm encoder layer on batch-first x, with F.linear on the (masked) weights: every input."""
    attn, e, h = layer.self_attn, 16, 2
    w = {name: p * getattr(owner, name.rpartition(".")[2] + "_mask", torch.ones_like(p)) for name, p, owner in [
        ("in_proj_weight", attn.in_proj_weight, attn), ("out.weight", attn.out_proj.weight, attn.out_proj),
        ("l1.weight", layer.linear1.weight, layer.linear1), ("l2.weight", layer.linear2.weight, layer.linear2),
    ]}  # fmt: skip
    q, k, v = F.linear(x, w["in_proj_weight"], attn.in_proj_bias).chunk(3, dim=-1)
    heads = [t.reshape(x.shape[0], x.shape[1], h, e // h).transpose(1, 2) for t in (q, k, v)]
    scores = heads[0] @ heads[1].transpose(-2, -1) / (e // h) ** 0.5
    context = (scores.softmax(-1) @ heads[2]).transpose(1, 2).reshape(x.shape)
    h1 = layer.norm1(x + F.linear(context, w["out.weight"], attn.out_proj.bias))
    hidden = torch.relu(F.linear(h1, w["l1.weight"], layer.linear1.bias))
    out = layer.norm2(h1 + F.linear(hidden, w["l2.weight"], layer.linear2.bias))
    return {"in_proj": x, "out_proj": context, "linear1": h1, "linear2": hidden, "out": out}


def _in_batch_first(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    return x if batch_first else x.transpose(0, 1)


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_wanda_equals_a_by_hand_reference_layer_by_layer(batch_first):
    layer, batches = _encoder(batch_first), _batches(batch_first)
    reference = copy.deepcopy(layer)
    summary = prune_wanda_(layer, batches, amount=0.5)
    names = ["self_attn.in_proj_weight", "self_attn.out_proj", "linear1", "linear2"]
    assert summary["per_layer"] == {n: 0.5 for n in names} and summary["skipped"] == {}
    x = torch.cat([_in_batch_first(b, batch_first) for b in batches])
    # by hand, in call order, each weight's inputs from the reference pruned upstream
    weights = [("in_proj", reference.self_attn, "in_proj_weight"), ("out_proj", reference.self_attn.out_proj, "weight"),
               ("linear1", reference.linear1, "weight"), ("linear2", reference.linear2, "weight")]  # fmt: skip
    for (key, owner, param), name in zip(weights, names):
        with torch.no_grad():
            inputs = _by_hand(reference, x)[key]
        weight = getattr(owner, param).detach().double()
        keep = _rows_keep(weight.abs() * _norms(inputs).unsqueeze(0), 0.5)
        owner.register_buffer(param + "_mask", keep)
        with torch.no_grad():
            getattr(owner, param).mul_(keep)
        got = (
            layer.self_attn.in_proj_weight_mask if key == "in_proj" else layer.get_submodule(name).weight_mask
        )
        assert torch.equal(got, keep), name
    assert (layer.self_attn.in_proj_weight == 0).sum(1).tolist() == [8] * 48  # exactly half of each row
    with torch.no_grad():  # eval + no_grad (the fused fast path is off while the masks' hooks exist)
        out = _in_batch_first(layer(_in_batch_first(x, batch_first)), batch_first)
        assert torch.allclose(out, _by_hand(layer, x)["out"], atol=1e-5)


def test_attention_sparsegpt_uses_each_projections_own_hessian():
    layer, batches = _encoder(True), _batches(True)
    reference = copy.deepcopy(layer)
    summary = prune_sparsegpt_(layer, batches, n=2, m=4, block_size=8)
    x = torch.cat(batches)
    rows = x.reshape(-1, 16).double()
    for part, rows_slice in enumerate((slice(0, 16), slice(16, 32), slice(32, 48))):
        w = reference.self_attn.in_proj_weight.detach()[rows_slice]
        expected = sparsegpt_prune(w, rows.T @ rows, n=2, m=4, block_size=8)
        assert torch.equal(layer.self_attn.in_proj_weight_mask[rows_slice], expected.keep)
        assert torch.allclose(layer.self_attn.in_proj_weight[rows_slice], expected.weight, atol=1e-5)
        label = ("query", "key", "value")[part]
        assert summary["errors"][f"self_attn.in_proj_weight:{label}"] == pytest.approx(
            expected.error, rel=1e-6
        )
    with torch.no_grad():  # out_proj: the Hessian of the context computed with the updated in_proj
        reference.self_attn.in_proj_weight.copy_(layer.self_attn.in_proj_weight)
        context = _by_hand(reference, x)["out_proj"].reshape(-1, 16).double()
    expected = sparsegpt_prune(
        reference.self_attn.out_proj.weight.detach(), context.T @ context, n=2, m=4, block_size=8
    )
    assert torch.equal(layer.self_attn.out_proj.weight_mask, expected.keep)
    assert torch.allclose(layer.self_attn.out_proj.weight, expected.weight, atol=1e-5)
    assert _pattern(layer.self_attn.in_proj_weight) == [2] and _pattern(layer.self_attn.out_proj.weight) == [
        2
    ]


class _Classifier(nn.Module):
    def __init__(self, body: nn.Module, width: int) -> None:
        super().__init__()
        self.body, self.head = body, nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out = out if isinstance(out, torch.Tensor) else out.last_hidden_state
        return self.head(out.float().mean(1))


def _fit(model: nn.Module, x: torch.Tensor) -> None:
    loader = DataLoader(TensorDataset(x, torch.arange(len(x)) % 3), batch_size=8)
    config = TrainConfig(epochs=2, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.01, progress=False)
    fit(model, loader, config=config)


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_masks_hold_through_fit_and_the_fast_path(batch_first):
    model = _Classifier(_encoder(True), 16).train()
    model.body.self_attn.batch_first = model.body.self_attn.batch_first and batch_first  # False: no fast path
    prune_n_m_(model, n=2, m=4, exclude=["head"])
    attn = model.body.self_attn
    masks = (attn.in_proj_weight_mask.clone(), attn.out_proj.weight_mask.clone())
    before = attn.in_proj_weight.detach().clone()
    _fit(model, torch.randn(24, 6, 16) if batch_first else torch.randn(6, 24, 16).transpose(0, 1))
    assert not torch.equal(attn.in_proj_weight, before)  # it trained
    state = model.state_dict()
    assert torch.equal(state["body.self_attn.in_proj_weight_mask"], masks[0])
    assert _pattern(state["body.self_attn.in_proj_weight"]) == [2]
    assert _pattern(state["body.self_attn.out_proj.weight"]) == [2]
    with torch.no_grad():  # an update after the last forward (as an optimiser step leaves it)
        for param in model.parameters():
            param.add_(0.01)
    model.eval()
    x = torch.randn(2, 6, 16)
    with torch.no_grad():  # the attention reads in_proj_weight and out_proj.weight without calling a module
        out = _in_batch_first(model.body(_in_batch_first(x, batch_first)), batch_first)
        assert torch.allclose(out, _by_hand(model.body, x)["out"], atol=1e-5)
    assert _pattern(attn.out_proj.weight) == [2] and _pattern(model.body.linear1.weight) == [2]


def test_gpt2_conv1d_masks_hold_through_fit():
    model = _Classifier(_gpt2(), 32).train()
    summary = prune_n_m_(model, n=2, m=4, exclude=["head"])
    assert len(summary["per_layer"]) == 8
    masks = {n: model.body.get_submodule(n).weight_mask.clone() for n in CONV1DS}
    _fit(model, torch.randint(0, 99, (16, 8)))
    state = model.state_dict()
    for name, mask in masks.items():
        assert torch.equal(state[f"body.{name}.weight_mask"], mask)
        assert _pattern(state[f"body.{name}.weight"].T) == [2], name
