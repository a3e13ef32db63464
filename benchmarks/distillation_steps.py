"""The training pieces of benchmarks/distillation.py: the protocol's training settings, netcompress KD with its
history, the bare reference KD loop it is checked against, cached models, and the step-by-step check.

Imported by benchmarks/distillation.py (which re-exports every name here); not a script of its own.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from netcompress.core import atomic_torch_save, check_choice
from netcompress.core.io import load_checkpoint
from netcompress.core.methods import MethodData, apply
from netcompress.distillation import SoftTargetsConfig
from netcompress.training import TrainConfig

try:
    from benchmarks import cifar_protocol as cp
except ModuleNotFoundError:  # run as `python benchmarks/distillation.py`: its folder is on sys.path
    import cifar_protocol as cp

if TYPE_CHECKING:  # the script's own class, for annotations only (the script imports this module)
    from distillation import Bench


# Bump when a run below changes how it trains, so stale cached models are not reused.
FORMAT_VERSION = 1


KL_FORMS = ("textbook", "log_target")


def train_config(protocol: cp.ProtocolConfig, *, epochs: int, lr: float) -> TrainConfig:
    """The settings ``train_baseline`` trains with, so KD and scratch runs differ only in the loss."""
    return cp.train_config(protocol, epochs=epochs, lr=lr)


def distill_with_history(
    student: nn.Module, teacher: nn.Module, train_loader: Any, config: TrainConfig, **kd: Any
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """``netcompress.distill`` through ``apply``, keeping the per-epoch rows: (student, rows)."""
    cfg = SoftTargetsConfig.from_dict({**config.to_dict(), **kd}, where="distill")
    data = MethodData(train_loader=train_loader, device=cfg.device, extras={"teacher": teacher})
    result = apply(student, cfg, data)
    return result.model, result.history


def reference_kd_fit(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: Any,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    seed: int,
    temperature: float,
    alpha: float,
    kl_form: str = "textbook",
) -> list[dict[str, float]]:
    """Knowledge distillation as a bare PyTorch loop, the way one writes it by hand; trains IN PLACE.

    SGD with a per-batch cosine rate and the textbook loss
    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``. Seeding matches
    ``fit`` (random, NumPy, torch at the start), so with the same initial weights and loader it
    sees the same augmented batches as ``netcompress.distill``. Returns per-epoch rows.

    ``kl_form="log_target"`` computes the KL from log-probabilities on both sides, the floating-
    point form netcompress uses: then the two runs are bitwise equal. The textbook form (softmax
    target) differs in the last bits, and SGD amplifies that into seed-like differences.

    Example:
        >>> rows = reference_kd_fit(student, teacher, loader, epochs=1, lr=0.05, momentum=0.9,
        ...                         weight_decay=5e-4, seed=0, temperature=4.0, alpha=0.9)
    """
    check_choice("kl_form", kl_form, KL_FORMS)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    teacher.eval()
    total_steps, step, rows = epochs * len(train_loader), 0, []
    for epoch in range(epochs):
        student.train()
        started, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        for inputs, targets in train_loader:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            with torch.no_grad():
                teacher_logits = teacher(inputs)
            logits = student(inputs)
            log_p_student = F.log_softmax(logits / temperature, dim=1)
            hard = F.cross_entropy(logits, targets)
            if kl_form == "textbook":
                p_teacher = F.softmax(teacher_logits / temperature, dim=1)
                kl = F.kl_div(log_p_student, p_teacher, reduction="batchmean")
                loss = alpha * temperature**2 * kl + (1.0 - alpha) * hard
            else:
                log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
                kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
                loss = alpha * (kl * temperature**2) + (1.0 - alpha) * hard
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach()) * len(targets)
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
        rows.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "train_acc": correct / seen,
                "time_s": round(time.perf_counter() - started, 3),
            }
        )
    return rows


def weights_key(model: nn.Module) -> str:
    """Short hash of every tensor's bytes in ``model``'s state dict (its weights and its shapes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_model(
    kind: str, settings: dict[str, Any], produce: Callable[[], tuple[nn.Module, dict[str, Any]]]
) -> tuple[nn.Module, dict[str, Any]]:
    """Load the pickled model of ``kind`` + ``settings`` from the cache, or produce and save it."""
    path = cp.CACHE_DIR / f"distill-{kind}-{cp.cache_key({**settings, 'version': FORMAT_VERSION})}.pt"
    if path.exists():
        saved = load_checkpoint(path)  # signed by atomic_torch_save below
        return saved["model"].eval(), {**saved["info"], "cache_hit": True}
    started = time.perf_counter()
    model, info = produce()
    info = {**info, "train_time_s": round(time.perf_counter() - started, 1)}
    atomic_torch_save({"model": model.cpu(), "info": info}, path, sign=True)
    return model.eval(), {**info, "cache_hit": False}


def max_weight_diff(a: nn.Module, b: nn.Module) -> float:
    """Largest absolute difference between matching state-dict tensors of two same-shaped models."""
    pairs = zip(a.state_dict().values(), b.state_dict().values())
    return max(float((x.double() - y.double()).abs().max()) for x, y in pairs)


def step_check(bench: Bench, teacher: nn.Module, *, steps: int = 20) -> dict[str, Any]:
    """The first ``steps`` KD batches three ways from one init: ``netcompress.distill``, the bare
    loop with the library's log-target KL, and with the textbook KL; weight gaps to netcompress.

    Separates "the loops differ" from "rounding differs": the log-target loop must end bitwise
    equal; the textbook one differs only by amplified rounding.
    """
    cfg, protocol = bench.config, bench.protocol
    order = torch.randperm(len(bench.bundle.train), generator=torch.Generator().manual_seed(protocol.seed))
    sampler = order[: steps * protocol.batch_size].tolist()
    config = train_config(protocol, epochs=1, lr=cfg.student_lr)
    kd = {"temperature": cfg.temperature, "alpha": cfg.alpha}

    def loader() -> DataLoader:
        return DataLoader(bench.bundle.train, batch_size=protocol.batch_size, sampler=sampler)

    ours, _ = distill_with_history(bench.fresh_student(), teacher, loader(), config, **kd)
    result: dict[str, Any] = {"steps": steps}
    for form in KL_FORMS:
        ref = bench.fresh_student()
        reference_kd_fit(
            ref,
            teacher,
            loader(),
            epochs=1,
            lr=cfg.student_lr,
            momentum=protocol.momentum,
            weight_decay=protocol.weight_decay,
            seed=protocol.seed,
            kl_form=form,
            **kd,
        )
        result[f"max_abs_weight_diff_{form}"] = max_weight_diff(ours, ref)
    return result


def compare_reference(
    model: nn.Module, info: dict, row: dict, ref: nn.Module, ref_info: dict, ref_row: dict
) -> dict[str, Any]:
    """netcompress KD vs the bare loop: accuracy gap, weight gap, per-epoch time and loss trace."""
    ours, bare = info.get("history", []), ref_info.get("history", [])
    return {
        "accuracy_gap_points": 100 * (row["accuracy"] - ref_row["accuracy"]),
        "max_abs_weight_diff": max_weight_diff(model, ref),
        "first_epoch_train_loss": [ours[0]["train_loss"], bare[0]["train_loss"]] if ours and bare else None,
        "epoch_time_s": [
            sum(r["time_s"] for r in ours) / max(len(ours), 1),
            sum(r["time_s"] for r in bare) / max(len(bare), 1),
        ],
    }
