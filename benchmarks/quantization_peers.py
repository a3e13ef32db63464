"""What benchmarks/quantization.py measures with, beside netcompress: the calibration images every method shares,
logits and scores, the peers (ONNX Runtime ``quantize_static``, torch.ao FX PTQ) and the QAT run.

Imported by benchmarks/quantization.py (which re-exports every name here); not a script of its own.
"""

from __future__ import annotations

import copy
import datetime
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from netcompress.quantization import (
    freeze_quantizers_,
    prepare_qat,
)
from netcompress.training import TrainConfig, fit

try:
    from benchmarks import cifar_protocol as cp
except ModuleNotFoundError:  # run as `python benchmarks/quantization.py`: its folder is on sys.path
    import cifar_protocol as cp

if TYPE_CHECKING:  # the script's own config, for annotations only (the script imports this module)
    from quantization import QuantBenchConfig


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


def calibration_batches(
    bundle: Any, *, num_images: int, batch_size: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed random set of training images without augmentation, as ``(x, y)`` batches.

    Every calibrated method (ours, ONNX Runtime's, torch.ao's) sees exactly these images.

    Example:
        >>> len(calibration_batches(bundle, num_images=256, batch_size=64))
        4
    """
    train = copy.copy(bundle.train)
    if hasattr(train, "augment"):
        train.augment = False  # calibrate on the images as the model sees them at test time
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(train), generator=gen)[: min(num_images, len(train))].tolist()
    loader = DataLoader(torch.utils.data.Subset(train, index), batch_size=batch_size, shuffle=False)
    return [(x, y) for x, y in loader]


def logits_on(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """All test-set logits and labels of ``model`` (eval mode, no gradients)."""
    model.eval()
    outs, labels = [], []
    with torch.inference_mode():
        for x, y in loader:
            outs.append(model(x).reshape(x.shape[0], -1).float())
            labels.append(torch.as_tensor(y))
    return torch.cat(outs), torch.cat(labels)


def score(logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Accuracy and top-1 agreement with the float model's ``reference`` logits (fractions)."""
    pred = logits.argmax(1)
    return {
        "accuracy": float((pred == labels).float().mean()),
        "agreement": float((pred == reference.argmax(1)).float().mean()),
    }


class CalibReader:
    """ONNX Runtime ``CalibrationDataReader`` over fixed batches (module level: picklable, reusable)."""

    def __init__(
        self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], input_name: str = "input"
    ) -> None:
        self.arrays = [np.ascontiguousarray(x.numpy(), dtype=np.float32) for x, _ in batches]
        self.input_name = input_name
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.arrays):
            return None
        self.position += 1
        return {self.input_name: self.arrays[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


def ort_quantize_static(
    float_onnx: Path, out_path: Path, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, Any]:
    """ONNX Runtime's own static quantizer: QDQ, per-channel int8 weights, uint8 activations, min-max.

    Example:
        >>> ort_quantize_static(Path("m.onnx"), Path("m_ort_int8.onnx"), calib)["size_bytes"]
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_path.with_suffix(".pre.onnx")
    quant_pre_process(str(float_onnx), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(out_path),
        CalibReader(batches),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink(missing_ok=True)
    return {"size_bytes": out_path.stat().st_size}


def torch_ao_fx_ptq(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], example: torch.Tensor
) -> nn.Module:
    """``torch.ao.quantization`` FX post-training quantization (x86/fbgemm qconfig) of a copy of ``model``.

    Deprecated upstream; the benchmark calls it while it still imports and reports any failure.

    Example:
        >>> qmodel = torch_ao_fx_ptq(model, calib, torch.randn(1, 3, 32, 32))
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (example,))
    with torch.inference_mode():
        for x, _ in batches:
            prepared(x)
    return convert_fx(prepared).eval()


def state_dict_bytes(model: nn.Module, path: Path) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the float/torch.ao models' file on disk."""
    torch.save(model.state_dict(), path)
    return path.stat().st_size


def end_layers(model: nn.Module) -> list[str]:
    """Names of the first and the last Conv/Linear layer (kept at 8 bits in W4 QAT by convention)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    return [names[0], names[-1]] if len(names) > 1 else names


def run_qat(
    model: nn.Module,
    train_loader: DataLoader,
    calib: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    config: QuantBenchConfig,
    protocol: cp.ProtocolConfig,
    epochs: int,
    from_ptq: nn.Module | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """W4A8 QAT from the float model (or QAT of a PTQ model's bit widths, ``from_ptq``).

    Returns the frozen fake-quantized model and a summary.
    """
    layers = None
    if from_ptq is None and config.qat_ends_8bit:
        layers = {n: {"bits": 8} for n in end_layers(model)}
    qat_model = prepare_qat(
        model,
        bits=4,
        act_bits=8,
        method=config.qat_method,
        layers=layers,
        from_ptq=from_ptq,
        calib_loader=calib,
        num_calib_batches=len(calib),
    )
    train_config = TrainConfig(
        epochs=epochs,
        lr=config.qat_lr,
        momentum=protocol.momentum,
        weight_decay=protocol.weight_decay,
        schedule="cosine",
        seed=protocol.seed,
        progress=False,
    )
    started = time.perf_counter()
    history = fit(qat_model, train_loader, config=train_config) if epochs else None
    freeze_quantizers_(qat_model.eval())
    return qat_model, {
        "epochs": epochs,
        "method": config.qat_method,
        "lr": config.qat_lr,
        "eight_bit_layers": sorted(layers or {}),
        "train_time_s": round(time.perf_counter() - started, 1),
        "train_acc": [round(r["train_acc"], 4) for r in history.rows] if history else [],
    }
