"""What a run measures and hands back: the loaders of each split, one stage row per model, RunResult.

Each step gets the training loader, the validation loader (held out of the training data: every
choice a step makes is made on it) and a calibration loader (the first ``calib_batches`` training
batches). The stage rows, the figures a report shows, are measured on the test split only, and
each row says so (``split: "test"``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.io import to_jsonable
from netcompress.evaluation import time_forward, top1_counts

STAGE_SPLIT = "test"  # the split every stage row (accuracy, loss) is measured on


@dataclasses.dataclass
class RunResult:
    """What a finished run produced: its folder, the measured stages and the report files."""

    run_dir: Path
    recipe: dict[str, Any]
    stages: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    report_md: Path | None = None
    report_html: Path | None = None
    points: list[RunResult] | None = None  # a sweep's runs, one per combination

    @property
    def final(self) -> dict[str, Any]:
        return self.stages[-1]


@dataclasses.dataclass
class SplitLoaders:
    """The loaders of one step: ``train`` (seeded shuffle), ``val`` (None without a validation
    split), ``test`` (only for the stage rows) and ``calib`` (the first training batches)."""

    train: Any
    val: Any
    test: Any
    calib: Any


def split_loaders(bundle: Any, data_cfg: dict[str, Any], seed: int) -> SplitLoaders:
    """The loaders a step seeded with ``seed`` reads, sized by the recipe's ``data`` block."""
    train, test = bundle.loaders(
        batch_size=data_cfg["batch_size"],
        eval_batch_size=data_cfg["eval_batch_size"],
        num_workers=data_cfg["num_workers"],
        seed=seed,
    )
    val = bundle.val_loader(eval_batch_size=data_cfg["eval_batch_size"], num_workers=data_cfg["num_workers"])
    return SplitLoaders(train, val, test, LimitedLoader(train, data_cfg["calib_batches"]))


def _embedding_task(loader: Any) -> bool:
    return getattr(getattr(loader, "dataset", None), "task", None) == "embedding"


def measure_stage(
    model: nn.Module,
    loader: Any,
    example_inputs: torch.Tensor,
    cfg: dict[str, Any],
    *,
    name: str,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Accuracy on ``loader`` (the test split) plus ``profile`` figures, as one JSON-able row.

    A batch-1 latency (what tables and plots show) whose timed forwards spread wider than
    ``NOISY_SPREAD`` of their median (a busy machine) is measured once more with twice the forwards in more rounds (``latency_remeasured``);
    if it is still that wide the row says ``latency_noisy: true`` and tables and plots mark it."""
    from netcompress.evaluation import evaluate, profile
    from netcompress.evaluation.harness import model_device

    if _embedding_task(loader):  # a sentence encoder's test split
        from netcompress.evaluation.embeddings import embedding_metrics

        metrics = embedding_metrics(model, loader, max_batches=cfg.get("max_batches"))
    else:
        metrics = evaluate(
            model, loader, max_batches=cfg.get("max_batches"), ignore_index=cfg.get("ignore_index", -100)
        )
    scores = {
        k: metrics[k]
        for k in ("cosine_mean", "cosine_min", "nn_agreement", "accuracy_metric", "miou", "label_f1")
        if k in metrics
    }

    def measure(rounds: int, repeats: int) -> dict[str, Any]:
        return profile(
            model,
            example_inputs,
            latency=cfg.get("latency", True),
            batch_sizes=tuple(cfg.get("batch_sizes") or (1, 64)),
            repeats=repeats,
            rounds=rounds,
        )

    repeats = cfg.get("repeats", 20)
    prof = measure(3, repeats)
    if _spreads_too_wide(prof):  # a busy moment: once more, with more and shorter rounds
        prof = {**measure(6, 2 * repeats), "latency_remeasured": True}
    if _slower_than_its_work(prof, reference):  # steadily slow for no reason: a stall, not the model
        prof = {**measure(6, 2 * repeats), "latency_remeasured": True}
    if cfg.get("latency", True):
        prof["latency_noisy"] = _spreads_too_wide(prof) or _slower_than_its_work(prof, reference)
    return to_jsonable(
        {
            "name": name,
            "split": STAGE_SPLIT,
            "device": str(model_device(model)),  # where accuracy and latency were measured
            "accuracy": metrics["accuracy"],
            "loss": metrics["loss"],
            **scores,
            **prof,
            **stored_size(model),
        }
    )


def measure_onnx_stage(
    path: Path, loader: Any, example_inputs: torch.Tensor, cfg: dict[str, Any], *, int8: bool
) -> dict[str, Any]:
    """Accuracy (on ``loader``, the test split) and latency of an exported model run in ONNX Runtime."""
    from netcompress.core.inputs import map_inputs
    from netcompress.export import OrtModel

    ort_model = OrtModel(path)
    if _embedding_task(loader):  # scored like the PyTorch stages: cosine and agreement to the references
        from netcompress.evaluation.embeddings import embedding_metrics

        metrics = embedding_metrics(ort_model, loader, max_batches=cfg.get("max_batches"))
        scores = {k: metrics[k] for k in ("cosine_mean", "cosine_min", "nn_agreement", "accuracy_metric")}
        accuracy = metrics["accuracy"]
    else:
        counts = top1_counts(
            ort_model, loader, max_batches=cfg.get("max_batches"), ignore_index=cfg.get("ignore_index", -100)
        )
        accuracy = counts["correct"] / max(counts["total"], 1)
        scores = {k: counts[k] for k in ("miou", "label_f1") if k in counts}
        if counts["task"] != "cross_entropy":
            scores["accuracy_metric"] = counts["metric"]
    row: dict[str, Any] = {
        "name": "onnx int8 (ORT)" if int8 else "onnx fp32 (ORT)",
        "split": STAGE_SPLIT,
        "accuracy": accuracy,
        **scores,
        "size_bytes": path.stat().st_size,
        "latency_ms": None,
        "latency_b64_ms": None,
    }
    if cfg.get("latency", True):
        for batch in sorted({int(b) for b in cfg.get("batch_sizes") or (1, 64)}):
            x = map_inputs(example_inputs, lambda t, b=batch: t[:1].expand(b, *t.shape[1:]).contiguous())
            prefix = "latency" if batch == 1 else f"latency_b{batch}"
            repeats = cfg.get("repeats", 20)
            timing = time_forward(ort_model, x, warmup=3, repeats=repeats, max_seconds=None, rounds=3)
            if _spreads_too_wide(
                {"latency_spread": timing["spread"]}
            ):  # re-measured once, as the PyTorch stages are
                timing = time_forward(ort_model, x, warmup=3, repeats=2 * repeats, max_seconds=None, rounds=6)
                row["latency_remeasured"] = True
            row[f"{prefix}_ms"], row[f"{prefix}_spread"] = timing["p50_ms"], timing["spread"]
        row["latency_noisy"] = _spreads_too_wide(row)
    return row


# A stage doing no more work (MACs) than the initial model but this many times slower was measured while
# the machine stalled the run (seen: 54 ms for a model that runs in 0.2 ms, a steady median, so the spread
# rule alone did not catch it): it is measured again, and flagged if it stays that slow.
OUTLIER_RATIO = 10.0


def _slower_than_its_work(stats: dict[str, Any], reference: dict[str, Any] | None) -> bool:
    if not reference or not stats.get("latency_ms") or not reference.get("latency_ms"):
        return False
    if (stats.get("macs") or 0) > (reference.get("macs") or 0):
        return False
    return stats["latency_ms"] > OUTLIER_RATIO * reference["latency_ms"]


def _spreads_too_wide(stats: dict[str, Any]) -> bool:
    """The batch-1 latency (the one tables and plots show) spread wider than NOISY_SPREAD of its median."""
    from netcompress.reporting.tables import NOISY_SPREAD

    return (stats.get("latency_spread") or 0.0) > NOISY_SPREAD


def stored_size(model: nn.Module) -> dict[str, Any]:
    """Bytes of the compact file netcompress writes for this model, where one beats the dense state dict.

    A quantized model is measured as its bit-packed file (``.ncq``), a pruned (masked) model as its
    sparse file (``.ncz``), a clustered one as its codebook file; the stage's ``size_bytes`` stays the
    dense ``state_dict`` size.
    """
    import tempfile

    from netcompress.pruning.masks import masked_parameters
    from netcompress.quantization.modules import QuantLayer
    from netcompress.quantization.storage import serialize_quantized

    if any(isinstance(m, QuantLayer) for m in model.modules()):
        payload, _ = serialize_quantized(model)
        return {"stored_bytes": len(payload), "stored_format": "ncq"}
    if masked_parameters(model):
        from netcompress.pruning.sparse_storage import save_sparse

        with tempfile.TemporaryDirectory() as tmp:
            info = save_sparse(model, Path(tmp) / "model.ncz")
        return {"stored_bytes": info["size_bytes"], "stored_format": "ncz"}
    from netcompress.clustering.weight_sharing import clustered_modules

    if next(clustered_modules(model), None) is not None:  # codebooks + packed indices, not the dense tensors
        from netcompress.clustering.storage import save_clustered

        with tempfile.TemporaryDirectory() as tmp:
            info = save_clustered(model, Path(tmp) / "model.clustered.pt")
        return {"stored_bytes": info["size_bytes"], "stored_format": "clustered"}
    return {}


def record_step(
    model: nn.Module,
    history: list[dict[str, Any]] | None,
    entry: dict[str, Any],
    state: dict[str, Any],
    run_dir: Path,
    test_loader: Any,
    example_inputs: Any,
    resolved: dict[str, Any],
) -> dict[str, Any]:
    """Write a finished step's files (summary, history, metrics, model), measure it, and return the run
    state with ``entry`` and its stage appended; ``state.json`` is written last, so a run killed before
    it redoes the step on resume. Rank 0 alone calls this under torchrun."""
    from netcompress.core.io import atomic_torch_save, atomic_write_json

    step_dir = run_dir / entry["dir"]
    atomic_write_json(step_dir / "summary.json", entry["summary"])
    if history is not None:
        atomic_write_json(step_dir / "history.json", history)
    stage = measure_stage(
        model,
        test_loader,
        example_inputs,
        resolved["evaluate"],
        name=entry["label"],
        reference=state["stages"][0],
    )
    atomic_write_json(step_dir / "metrics.json", stage)
    atomic_torch_save(model, step_dir / "model.pt", sign=True)
    state["finished_steps"].append(entry)
    state["stages"].append(stage)
    atomic_write_json(run_dir / "state.json", state)
    return state


class LimitedLoader:
    """Iterates over the first ``max_batches`` batches of a loader (a calibration set)."""

    def __init__(self, loader: Any, max_batches: int) -> None:
        self.loader, self.max_batches = loader, max_batches

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.max_batches:
                return
            yield batch

    def __len__(self) -> int:
        return min(self.max_batches, len(self.loader))


def say(progress: bool, text: str) -> None:
    """Print one highlighted progress line when ``progress`` is on."""
    if progress:
        from rich.console import Console

        Console(stderr=False).print(f"[bold cyan]{text}[/]")
