"""A zoo of public model classes no one here wrote, quantized W8A8 and exported to int8 ONNX.

Each model is built from a tiny config (random weights, 32x32 images, few channels) and must
quantize, export, load in ONNX Runtime and match the PyTorch fake-quant model within the stated
tolerance (``export_onnx(check=True)`` raises otherwise), or name the layers it kept float.
Needs the ``zoo`` extra (``pip install netcompress[zoo]``); skipped with a reason without it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.methods import MethodData, apply
from netcompress.export.onnx import TOLERANCE
from netcompress.quantization.fake_quant import FakeQuantize
from netcompress.quantization.ptq import PTQStaticConfig

IMAGE = 32


class Logits(nn.Module):
    """Hugging Face models return an output object; a user exports its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def _hf(name: str) -> nn.Module:
    transformers = pytest.importorskip("transformers", reason="the zoo extra (transformers) is not installed")
    t = transformers
    configs: dict[str, Callable[[], nn.Module]] = {
        "hf_resnet": lambda: t.ResNetForImageClassification(
            t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
        ),
        "hf_mobilenet_v1": lambda: t.MobileNetV1ForImageClassification(
            t.MobileNetV1Config(depth_multiplier=0.25, image_size=IMAGE, num_labels=10)
        ),
        "hf_mobilenet_v2": lambda: t.MobileNetV2ForImageClassification(
            t.MobileNetV2Config(depth_multiplier=0.25, image_size=IMAGE, num_labels=10)
        ),
        "hf_convnext": lambda: t.ConvNextForImageClassification(
            t.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=10)
        ),
        "hf_regnet": lambda: t.RegNetForImageClassification(
            t.RegNetConfig(
                embedding_size=8,
                hidden_sizes=[8, 16],
                depths=[1, 1],
                groups_width=8,
                layer_type="y",
                num_labels=10,
            )
        ),
        "hf_efficientnet": lambda: t.EfficientNetForImageClassification(
            t.EfficientNetConfig(
                image_size=IMAGE, width_coefficient=0.25, depth_coefficient=0.2, hidden_dim=320, num_labels=10
            )
        ),
        "hf_mobilevit": lambda: t.MobileViTForImageClassification(
            t.MobileViTConfig(
                image_size=IMAGE,
                patch_size=2,
                hidden_sizes=[16, 24, 32],
                neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
                num_attention_heads=2,
                num_labels=10,
            )
        ),
    }
    return Logits(configs[name]())


def _efficientnet_pytorch(name: str) -> nn.Module:
    ep = pytest.importorskip(
        "efficientnet_pytorch", reason="the zoo extra (efficientnet-pytorch) is not installed"
    )
    from efficientnet_pytorch.utils import get_model_params

    # a fixed image size gives Conv2dStaticSamePadding, none gives Conv2dDynamicSamePadding:
    # both subclass nn.Conv2d with their own forward (TF "same" padding)
    image_size = IMAGE if name == "effnet_pt_static" else None
    params = {
        "image_size": image_size,
        "width_coefficient": 0.25,
        "depth_coefficient": 0.2,
        "num_classes": 10,
    }
    model = ep.EfficientNet(*get_model_params("efficientnet-b0", params))
    model.set_swish(memory_efficient=False)  # the memory-efficient swish is an autograd.Function
    return model


ZOO: dict[str, Callable[[str], nn.Module]] = {
    **{n: _hf for n in ("hf_resnet", "hf_mobilenet_v1", "hf_mobilenet_v2", "hf_convnext", "hf_regnet")},
    **{n: _hf for n in ("hf_efficientnet", "hf_mobilevit")},
    "effnet_pt_static": _efficientnet_pytorch,
    "effnet_pt_dynamic": _efficientnet_pytorch,
}
CONV_SUBCLASS_MODELS = {"effnet_pt_static", "effnet_pt_dynamic"}


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = ZOO[name](name).eval()
    for m in model.modules():  # trained-like BN statistics, so folding is not the identity
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_quantizes_w8a8_and_exports_an_int8_file_ort_runs(name, tmp_path):
    model = _build(name)
    gen = torch.Generator().manual_seed(1)
    calib = [(torch.randn(8, 3, IMAGE, IMAGE, generator=gen), torch.zeros(8)) for _ in range(2)]
    result = apply(model, PTQStaticConfig(bits=8, num_calib_batches=2), MethodData(calib_loader=calib))
    qmodel, summary = result.model, result.summary
    # every Conv/Linear is quantized (none kept float on these models)
    assert summary["num_quantized_layers"] > 0 and summary["float_layers"] == []
    # activation quantizers are per-tensor (ORT refuses per-channel QLinearAveragePool scales)
    acts = [q for q in qmodel.modules() if isinstance(q, FakeQuantize) and q.role == "activation"]
    assert acts and all(q.scale.numel() == 1 for q in acts)
    assert summary["graph"] == "fx", summary["graph"]  # shape checks and conv subclasses trace
    bn_left = [n for n, m in qmodel.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    not_folded = {bn for _, bn, _ in summary["fold_bn"]["not_folded"]}
    assert set(bn_left) <= not_folded, f"BN left unfolded without a reason: {bn_left}"
    if name in CONV_SUBCLASS_MODELS:
        assert bn_left == [] and summary["fold_bn"]["num_folded"] > 0
    x = torch.randn(1, 3, IMAGE, IMAGE, generator=gen)
    # check=True raises ExportMismatchError beyond the int8 tolerance, and ORT must load the file
    exported = nc.export_onnx(qmodel, tmp_path / f"{name}.onnx", x, int8=True, check=True)
    assert exported["check"]["max_rel_diff"] <= TOLERANCE[True]
    assert exported["check"]["top1_agreement"] >= 0.75
    assert exported["int8_op_counts"].get("QLinearConv", 0) > 0, exported["op_counts"]
