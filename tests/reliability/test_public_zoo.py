"""Regressions from the public-model sweep (benchmarks/zoo_sweep.py): one small model per root cause.

Each case is what a public model class does that the models written here did not: a forward wrapped by a
decorator that takes ``**kwargs`` (Hugging Face's ``can_return_tuple``), input checks that branch on shapes,
a Conv2d subclass with its own forward, an op only a later ONNX opset has, configs and namedtuples held as
attributes, cache objects in the output. Each must work exactly (pruned == masked, same outputs after a
save/load round trip, export check) or be refused with an error naming the layer or op.
"""

from __future__ import annotations

import collections
import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import output_tensor
from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning
from netcompress.quantization.tracing import trace_for_quantization

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def masked_reference(model: nn.Module, keep: dict) -> nn.Module:
    """The original where every Conv/Linear ignores the input channels pruning removed (zeroed on the way in)."""
    ref = copy.deepcopy(model)
    for name, module in ref.named_modules():
        kept = keep.get(name, {}).get("in")
        if kept is None or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        mask = torch.zeros(module.in_features if isinstance(module, nn.Linear) else module.in_channels)
        mask[kept] = 1
        dim = -1 if isinstance(module, nn.Linear) else 1
        module.register_forward_pre_hook(
            lambda m, args, mask=mask, dim=dim: (args[0] * mask.view([-1 if d == dim % args[0].dim() else 1 for d in range(args[0].dim())]),)
        )  # fmt: skip
    return ref


def prune_and_compare(model: nn.Module, x: torch.Tensor, ratio: float = 0.5) -> nn.Module:
    model.eval()
    plan = plan_channel_pruning(model, x, ratio=ratio)
    small = apply_channel_plan(model, plan, x)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        want = output_tensor(masked_reference(model, plan.keep_indices())(x))
        got = output_tensor(small(x))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    return small


# ---------------------------------------------------------------- decorated forward, shape checks
def returns_tuple_if_asked(func):
    """A decorator like Hugging Face's ``can_return_tuple``: ``wrapper(self, *args, **kwargs)``."""

    @functools.wraps(func)
    def wrapper(self, *args, **kwargs):
        as_tuple = kwargs.pop("as_tuple", False)
        out = func(self, *args, **kwargs)
        return (out,) if as_tuple else out

    return wrapper


class Decorated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.body = nn.Conv2d(8, 12, 3, padding=1)
        self.head = nn.Linear(12, 4)

    @returns_tuple_if_asked
    def forward(self, pixels: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if pixels.shape[1] != 3:  # an input check: a branch on a shape
            raise ValueError("expected 3 channels")
        h = F.relu(self.bn(self.stem(pixels)))
        return self.head(F.relu(self.body(h)).mean((2, 3)))


def test_a_decorated_forward_with_kwargs_traces_for_quantization_and_pruning():
    torch.manual_seed(0)
    model = Decorated().eval()
    gm = trace_for_quantization(model, example_inputs=X)
    assert type(model) is Decorated  # the class is restored after tracing
    torch.testing.assert_close(gm(X), model(X), rtol=0, atol=0)
    small = prune_and_compare(model, X)
    assert small.body.out_channels == 6 and small.stem.out_channels == 4
    qmodel = nc.quantize(model, [(X, torch.zeros(2))], bits=8)
    assert any(type(m).__name__ == "QuantConv2d" for m in qmodel.modules())


class ChangesOutput(Decorated):
    """A wrapper that does more than pass the inner result on: tracing the inner forward would be wrong."""

    def forward(self, pixels, **kwargs):  # noqa: ANN001, ANN201
        return self._inner(pixels, **kwargs)

    @staticmethod
    def _double(func):
        @functools.wraps(func)
        def wrapper(self, *args, **kwargs):
            return func(self, *args, **kwargs) * 2

        return wrapper


ChangesOutput.forward = ChangesOutput._double(Decorated.forward.__wrapped__)


def test_a_wrapper_that_changes_the_output_is_refused_not_traced_past():
    model = ChangesOutput().eval()
    with pytest.raises(UnsupportedModelError, match="wrapper changes what the inner forward returns"):
        trace_for_quantization(model, example_inputs=X)
    with pytest.raises(UnsupportedModelError, match="wrapper changes"):
        plan_channel_pruning(model, X, ratio=0.5)


def test_hugging_face_convnext_v2_traces_and_resnet_prunes_equal_to_masked():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.ConvNextV2Config(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=5)
    convnext = transformers.ConvNextV2ForImageClassification(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    gm = trace_for_quantization(convnext, example_inputs=x)  # can_return_tuple + **kwargs
    torch.testing.assert_close(output_tensor(gm(x)), convnext(x).logits, rtol=0, atol=0)
    resnet = transformers.ResNetForImageClassification(
        transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck",
                                  num_labels=5)
    ).eval()  # fmt: skip
    for m in resnet.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
    prune_and_compare(resnet, x, ratio=0.3)


# ---------------------------------------------------------------- Conv2d subclasses with their own forward
class SamePaddingConv(nn.Conv2d):
    """TF "same" padding computed from the input size (efficientnet-pytorch's Conv2dDynamicSamePadding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.size()[-2:]
        kh, kw = self.weight.size()[-2:]
        sh, sw = self.stride
        ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StandardisedConv(nn.Conv2d):
    """Weight standardisation (BiT): each filter is normalised over all its input channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SubclassNet(nn.Module):
    def __init__(self, conv: type[nn.Conv2d]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.bn = conv(3, 8, 3, stride=2), nn.BatchNorm2d(8)
        self.dw, self.bn2 = conv(8, 8, 3, groups=8), nn.BatchNorm2d(8)
        self.pw = conv(8, 12, 1)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.bn(self.stem(x)))
        x = F.silu(self.bn2(self.dw(x)))
        return self.head(F.silu(self.pw(x)).mean((2, 3)))


def test_conv_subclass_with_same_padding_prunes_equal_to_masked():
    model = SubclassNet(SamePaddingConv)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
    small = prune_and_compare(model, X)
    assert type(small.stem) is SamePaddingConv and small.stem.out_channels == 4 == small.dw.in_channels
    assert small.dw.groups == 4 and small.pw.out_channels == 6


def test_a_weight_standardised_conv_is_refused_naming_it():
    with pytest.raises(UnsupportedModelError, match="'stem'.*StandardisedConv|StandardisedConv.*'stem'"):
        nc.prune_channels(SubclassNet(StandardisedConv).eval(), X, ratio=0.5)


# ---------------------------------------------------------------- ONNX opsets
class Fold(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(self.conv(x), kernel_size=2, stride=2)
        return self.fc(F.fold(patches, output_size=(16, 16), kernel_size=2, stride=2).mean((2, 3)))


def test_an_op_from_a_later_opset_exports_at_that_opset(tmp_path):
    summary = nc.export_onnx(Fold().eval(), tmp_path / "fold.onnx", X)  # aten::col2im exists from opset 18
    assert summary["opset"] == 18 and summary["opset_raised_for"] == "aten::col2im"
    assert summary["check"]["max_rel_diff"] < 1e-4 and summary["op_counts"]["Col2Im"] == 1


class FoldComputedSize(Fold):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(self.conv(x), kernel_size=2, stride=2)
        size = (x.shape[-2], x.shape[-1])  # computed in forward: the col2im symbolic needs constants
        return self.fc(F.fold(patches, output_size=size, kernel_size=2, stride=2).mean((2, 3)))


def test_an_op_the_exporter_cannot_convert_is_an_error_naming_it(tmp_path):
    with pytest.raises(UnsupportedModelError, match="aten::col2im at opset 18"):
        nc.export_onnx(FoldComputedSize().eval(), tmp_path / "fold.onnx", X)


# ---------------------------------------------------------------- save / load of models nobody here wrote
Settings = collections.namedtuple("Settings", ["width", "rate"])


class Labels(tuple):
    pass


class WithSettings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.settings = Settings(width=8, rate=0.5)
        self.fc = nn.Linear(4, self.settings.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.settings.rate


def test_a_namedtuple_attribute_comes_back_as_its_class(tmp_path):
    model = WithSettings().eval()
    x = torch.randn(2, 4)
    summary = nc.save(model, tmp_path / "m.nc", example_inputs=x)
    assert summary["allow_modules"] == [__name__]
    back = nc.load(tmp_path / "m.nc", allow_modules=[__name__.partition(".")[0]])  # a package prefix allows
    assert type(back.settings) is Settings and back.settings.rate == 0.5
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


def test_a_tuple_subclass_attribute_is_refused_not_saved_as_a_tuple(tmp_path):
    model = WithSettings()
    model.labels = Labels(("a", "b"))
    with pytest.raises(ConfigError, match=r"model\.labels: a Labels \(a tuple subclass\)"):
        nc.save(model, tmp_path / "m.nc")


@pytest.mark.parametrize("family", ["vit", "llama"])
def test_hugging_face_models_save_and_load_with_their_package_allowed(family, tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if family == "vit":
        model = transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20, image_size=16,
            patch_size=8, num_labels=3))  # fmt: skip
        x = torch.randn(2, 3, 16, 16)
    else:  # its output holds a DynamicCache object next to the logits
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=24,
            vocab_size=50))  # fmt: skip
        x = {"input_ids": torch.randint(0, 50, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    model.eval()
    summary = nc.save(model, tmp_path / "m.nc", example_inputs=x)
    assert summary["allow_modules"] and all(m.startswith("transformers.") for m in summary["allow_modules"])
    with pytest.raises(Exception, match="allow_modules=\\['transformers'\\]"):
        nc.load(tmp_path / "m.nc")
    back = nc.load(tmp_path / "m.nc", allow_modules=["transformers"])
    with torch.no_grad():
        want = output_tensor(model(**x) if isinstance(x, dict) else model(x))
        got = output_tensor(back(**x) if isinstance(x, dict) else back(x))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---------------------------------------------------------------- transformer pruning on other layouts
def _text(n: int = 2, seq: int = 7) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, 50, (n, seq), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[0, seq - 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _pruned_params(model: nn.Module, inputs, **shares) -> tuple[int, int, nn.Module]:
    small = nc.prune_transformer(model, inputs, **shares)  # raises unless pruned == masked original
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in small.parameters()), small


def test_swin_heads_prune_with_their_relative_position_bias_rows():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.SwinForImageClassification(transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=3,
    )).eval()  # fmt: skip
    before, after, small = _pruned_params(model, torch.randn(2, 3, 32, 32), heads=0.5, ffn=0.0)
    tables = [
        m.relative_position_bias_table.shape
        for n, m in small.named_modules()
        if hasattr(m, "relative_position_bias_table")
    ]
    assert tables == [(49, 1), (49, 2)]  # (2 * window - 1)^2 positions, the kept heads
    assert after < before


def test_t5_hidden_width_prunes_through_its_rms_style_layer_norm():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(transformers.T5Config(
        d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, vocab_size=50, relative_attention_num_buckets=8,
    )).eval()  # fmt: skip
    with torch.no_grad():  # trained-like norm weights, so an RMS norm and a LayerNorm differ clearly
        for m in model.modules():
            if type(m).__name__ == "T5LayerNorm":
                m.weight.uniform_(0.5, 1.5)
    _, _, small = _pruned_params(model, _text(), heads=0.0, ffn=0.0, hidden=0.25)
    assert small.shared.embedding_dim == 24 and small.encoder.final_layer_norm.weight.shape == (24,)


def test_albert_ffn_and_its_shared_layer_prune():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.AlbertModel(transformers.AlbertConfig(
        embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
        vocab_size=50,
    )).eval()  # fmt: skip
    _, _, small = _pruned_params(model, _text(), heads=0.5, ffn=0.5)
    layer = small.encoder.albert_layer_groups[0].albert_layers[0]  # one layer shared by both depths
    assert layer.ffn.out_features == 20 == layer.ffn_output.in_features
    assert layer.attention.num_attention_heads == 2


# ---------------------------------------------------------------- profile, export and save of model code reading odd things
class SlicedTable(nn.Module):
    """Feeds a slice of a parameter to a layer (DeBERTa's relative-position embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Parameter(torch.randn(10, 8))
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.proj(self.table[:4]).t()


def test_profile_counts_macs_of_a_layer_fed_a_parameter_slice():
    stats = nc.profile(SlicedTable(), torch.randn(2, 8), latency=False, memory=False)
    assert stats["macs"] == 4 * 8 * 8 + 8 * 4  # per sample: the table slice once, x @ (8, 4)
    assert all(p.requires_grad for p in SlicedTable().parameters())


class ReadsWeightDtype(nn.Module):
    """Casts to its layer's weight dtype in forward (T5's FFN: ``hidden.to(self.wo.weight.dtype)``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.wo = nn.Linear(16, 32), nn.Linear(32, 8)
        self.act = functools.partial(F.gelu, approximate="tanh")  # transformers' GELUTanh holds this

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x))
        return self.wo(h.to(self.wo.weight.dtype))


@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_export_of_a_model_reading_its_layer_weight(mode, tmp_path):
    model, x = ReadsWeightDtype().eval(), torch.randn(4, 16)
    q = (
        nc.quantize(model, mode="dynamic")
        if mode == "dynamic"
        else nc.quantize(model, [x], mode=mode, bits=4)
    )
    summary = nc.export_onnx(q, tmp_path / "m.onnx", x, int8=True, check=True)
    kernel = "DynamicQuantizeMatMul" if mode == "dynamic" else "MatMulNBits"
    assert summary["op_counts"][kernel] == 2


def test_a_partial_of_an_allowed_function_saves_and_loads(tmp_path):
    model, x = ReadsWeightDtype().eval(), torch.randn(4, 16)
    nc.save(model, tmp_path / "m.nc", example_inputs=x)
    back = nc.load(tmp_path / "m.nc", allow_modules=[__name__])
    assert back.act.func is F.gelu and back.act.keywords == {"approximate": "tanh"}
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    model.act = functools.partial(print, "x")  # not a torch/math/operator function: refused by name
    with pytest.raises(ConfigError, match="'print' is not a function of torch"):
        nc.save(model, tmp_path / "bad.nc")


@pytest.mark.parametrize("family", ["segformer", "pvt"])
def test_dense1_dense2_ffn_prunes_with_its_depthwise_conv(family):
    """PVT's dense1 -> dense2 FFN; SegFormer's Mix-FFN (fc1 -> fc2) has a depthwise conv over the neurons between."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    common = dict(num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                  mlp_ratios=[2, 2], num_labels=3)  # fmt: skip
    if family == "segformer":
        cfg = transformers.SegformerConfig(sr_ratios=[2, 1], patch_sizes=[7, 3], strides=[4, 2], **common)
        model = transformers.SegformerForImageClassification(cfg).eval()
    else:
        cfg = transformers.PvtConfig(image_size=32, sequence_reduction_ratios=[2, 1], patch_sizes=[4, 2],
                                     strides=[4, 2], **common)  # fmt: skip
        model = transformers.PvtForImageClassification(cfg).eval()
    _, _, small = _pruned_params(model, torch.randn(2, 3, 32, 32), heads=0.0, ffn=0.5)
    mlps = [m for n, m in small.named_modules() if n.endswith(".mlp")]
    up, down = ("fc1", "fc2") if family == "segformer" else ("dense1", "dense2")
    assert (
        [getattr(m, up).out_features for m in mlps]
        == [16, 32]
        == [getattr(m, down).in_features for m in mlps]
    )
    if family == "segformer":
        assert [(m.dwconv.dwconv.out_channels, m.dwconv.dwconv.groups) for m in mlps] == [(16, 16), (32, 32)]


# ---------------------------------------------------------------- split / chunk in channel pruning
class Splits(nn.Module):
    """A channel split into pieces of fixed sizes (FocalNet's query/context/gates) and a spatial chunk."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(4, 6, 1)
        self.c, self.fc = nn.Conv2d(12, 8, 1), nn.Linear(6 + 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x))
        q, ctx, gates = torch.split(h, [4, 4, 4], 1)
        gated = q * ctx + gates[:, 1:2] * gates[:, 0:4]  # a channel slice of a kept piece
        top, bottom = F.relu(self.c(h)).chunk(2, dim=2)
        return self.fc(torch.cat([F.relu(self.b(gated)).mean((2, 3)), (top + bottom).mean((2, 3))], 1))


def test_split_along_channels_keeps_them_and_a_spatial_chunk_keeps_its_channels_prunable():
    small = prune_and_compare(Splits().eval(), torch.randn(2, 3, 8, 8))
    assert small.a.out_channels == 12  # split into fixed sizes: kept
    assert (small.b.out_channels, small.c.out_channels, small.fc.in_features) == (3, 4, 7)


def test_deberta_v2_heads_prune_with_its_position_projections():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.DebertaV2Model(transformers.DebertaV2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=50,
        max_position_embeddings=64, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=16,
        position_buckets=8,
    )).eval()  # fmt: skip
    _, _, small = _pruned_params(model, _text(), heads=0.5, ffn=0.0)
    attn = small.encoder.layer[0].attention.self
    assert (
        attn.query_proj.out_features
        == 16
        == attn.pos_key_proj.out_features
        == attn.pos_query_proj.out_features
    )


# ---------------------------------------------------------------- causal LMs: fit with class labels, agreement
def _tiny_gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50, n_positions=16)
    return transformers.GPT2LMHeadModel(config)


def test_fit_of_a_causal_lm_on_class_labels_is_refused_naming_both_shapes():
    from netcompress.core.errors import DataError
    from netcompress.training import TrainConfig

    model = _tiny_gpt2()
    before = copy.deepcopy(model.state_dict())
    batches = [(_text(), torch.tensor([0, 1]))]
    config = TrainConfig(epochs=1, lr=0.1, progress=False)
    with pytest.raises(
        DataError, match=r"returns \(2, 7, 50\) \(batch, tokens, vocab\).* targets are \(2,\)"
    ) as info:
        nc.fit_(model, batches, config=config)
    assert (
        "unlabelled batches" in str(info.value)
        and "loss_fn" in str(info.value)
        and "\n" not in str(info.value)
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before any step
    # a loss of the user's own is theirs to pair with the outputs: no check, one step taken
    last_token = lambda out, y: F.cross_entropy(out[:, -1, :2], y)  # noqa: E731
    history = nc.fit_(model, batches, config=config, loss_fn=last_token)
    assert torch.isfinite(torch.tensor(history.last["train_loss"]))
    assert not torch.equal(before["lm_head.weight"], model.state_dict()["lm_head.weight"])


@pytest.mark.parametrize(
    ("outputs", "targets", "ok"),
    [
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), True),
        (torch.zeros(4, 3), torch.zeros(4, 3), True),  # probabilities (mixup, soft labels)
        (torch.zeros(4, 3, 5, 5), torch.zeros(4, 5, 5, dtype=torch.long), True),  # segmentation
        (torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.long), False),
        (torch.zeros(4, 3), torch.zeros(4), False),  # float class indices
        (
            torch.zeros(4, 7, 50),
            torch.zeros(4, 7, dtype=torch.long),
            False,
        ),  # per-token labels: classes on dim 2
    ],
)
def test_default_loss_shape_check(outputs, targets, ok):
    from netcompress.core.errors import DataError
    from netcompress.training.loop import check_cross_entropy_shapes

    if ok:
        check_cross_entropy_shapes(outputs, targets)
        F.cross_entropy(outputs, targets)  # what the check lets through, cross entropy takes
    else:
        with pytest.raises(
            DataError, match=rf"returns {tuple(outputs.shape)}".replace("(", r"\(").replace(")", r"\)")
        ):
            check_cross_entropy_shapes(outputs, targets)


class FixedLogits(nn.Module):
    """A stand-in language model returning fixed (batch, tokens, vocab) logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits[: input_ids.shape[0]]


def test_agreement_of_lm_logits_is_per_real_token():
    from netcompress.quantization.fidelity import collect_outputs, score_outputs

    ref = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(0))
    out = ref.clone()
    top = ref.argmax(-1)
    out[1, 0, (top[1, 0] + 1) % 5] += 100.0  # a real token changes its argmax
    out[0, 6, (top[0, 6] + 1) % 5] += 100.0  # a padded one (mask 0) does not count
    batches = [(_text(), torch.tensor([0, 1]))]  # class labels are ignored per token
    a = collect_outputs(FixedLogits(ref), batches, metric="agreement", num_batches=1)
    b = collect_outputs(FixedLogits(out), batches, metric="agreement", num_batches=1)
    assert tuple(a.values.shape) == (12, 5) and a.labels is None  # 5 + 7 real tokens
    assert score_outputs(a, b)["agreement"] == pytest.approx(11 / 12)
    no_mask = [({"input_ids": _text()["input_ids"]},)]
    a, b = (collect_outputs(FixedLogits(t), no_mask, metric="agreement", num_batches=1) for t in (ref, out))
    assert score_outputs(a, b)["agreement"] == pytest.approx(12 / 14)
    acc = collect_outputs(FixedLogits(ref), batches, metric="accuracy", num_batches=1)
    with pytest.raises(ConfigError, match=r"metric='agreement' for \(batch, tokens, vocab\)"):
        score_outputs(acc, acc)


def test_accuracy_aware_quantization_of_a_causal_lm_by_token_agreement():
    model = _tiny_gpt2().eval()
    batches = [(_text(), torch.tensor([0, 1]))] * 2
    qmodel, summary = nc.quantize_accuracy_aware(
        model, batches, batches, mode="dynamic", metric="agreement", min_agreement=0.5, max_trials=1
    )
    assert summary["metric"] == "agreement" and summary["met"]
    assert summary["search"]["num_val_samples"] == 24  # 2 batches x 12 real tokens, not 4 sentences
    assert 0.5 <= summary["scores"]["agreement"] <= 1.0


def test_beit_heads_prune_with_the_per_layer_position_bias_beside_the_attention():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.BeitForImageClassification(transformers.BeitConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
        patch_size=8, num_labels=3, use_relative_position_bias=True, layer_scale_init_value=0.1,
    )).eval()  # fmt: skip
    for layer in model.beit.encoder.layer if hasattr(model.beit, "encoder") else model.beit.layers:
        torch.nn.init.normal_(
            layer.relative_position_bias.relative_position_bias_table, std=1.0
        )  # not all zero
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    _, _, small = _pruned_params(model, x, heads=0.5, ffn=0.0)  # raises unless pruned == masked original
    layers = small.beit.encoder.layer if hasattr(small.beit, "encoder") else small.beit.layers
    assert [tuple(m.relative_position_bias.relative_position_bias_table.shape) for m in layers] == [
        (52, 2)
    ] * 2
    assert layers[0].attention.q_proj.out_features == 16
    # independently of the built-in check: the original with the removed heads' outputs zeroed
    masked = copy.deepcopy(model)
    old_layers = masked.beit.encoder.layer if hasattr(masked.beit, "encoder") else masked.beit.layers
    for old, new in zip(old_layers, layers):
        table, kept_table = (
            old.relative_position_bias.relative_position_bias_table,
            new.relative_position_bias.relative_position_bias_table,
        )
        kept = [h for h in range(4) if any(torch.equal(table[:, h], kept_table[:, j]) for j in range(2))]
        assert len(kept) == 2
        with torch.no_grad():
            for h in set(range(4)) - set(kept):
                old.attention.o_proj.weight[:, h * 8 : (h + 1) * 8] = 0
    with torch.no_grad():
        torch.testing.assert_close(small(x).logits, masked(x).logits, atol=1e-5, rtol=1e-5)
