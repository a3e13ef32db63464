"""Run by tests/training/test_distributed.py under ``torchrun --nproc_per_node=2`` (not a test itself).

Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py WORK_DIR PART...

Each rank writes ``WORK_DIR/rank<R>-<PART>.json`` for every PART it runs:

- ``core``: the metric all-reduce and checksum unit checks, hook metrics of a ``fit`` (see
  :func:`hook_metrics_fit`, which the test also runs in one process), then ``WORK_DIR/ddp-tiny.yaml``
  through ``netcompress run`` and its ``--resume``, recording the checksums after every model sync.
- ``teacher``: ``WORK_DIR/ddp-kd.yaml`` (distillation from a teacher trained in the step, then QAT),
  then a resume that finds the step's ``teacher.pt`` (rank 0 forgets the finished steps, as if killed
  before they were recorded).
- ``sweep``: ``WORK_DIR/ddp-sweep.yaml`` (a 2-point sweep) through ``run_recipe``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netcompress.training import TrainConfig, fit


class MeanTarget:
    """A hook reporting the mean target of the samples this process trained on (``local``: before
    any reduction over ranks)."""

    def epoch_start(self, model: nn.Module, epoch: int) -> None:
        self.total, self.count = 0.0, 0

    def loss(self, model, inputs, outputs, targets, loss):
        self.total += float(targets.sum())
        self.count += targets.numel()
        return loss

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        self.local = self.total / self.count
        return {"mean_target": self.local, "weight_sum": float(model.weight.detach().double().sum())}


def hook_metrics_fit() -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One epoch of a linear model with a distillation hook and :class:`MeanTarget` on 64 samples in
    global batches of 16 (in order: under torchrun rank 0 reads the even samples, whose target is 0,
    rank 1 the odd ones, target 3). Returns the history rows and this process's own values."""
    from netcompress.distillation.hooks import SoftTargetDistillation

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    y = torch.tensor([0, 3] * 32)
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 4), nn.Linear(4, 4)
    kd, mean = SoftTargetDistillation(teacher, temperature=2.0, alpha=0.5), MeanTarget()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    history = fit(student, loader, hooks=[kd, mean], config=TrainConfig(epochs=1, lr=0.1, progress=False))
    local = {"mean_target": mean.local, "kd_soft_loss": float(kd._soft_sum) / kd._batches}
    return history.rows, local


def _record_syncs(replica_sync: Any) -> list[dict[str, Any]]:
    """Wrap ``sync_model_`` so that every sync appends ``{where, checksums}`` to the returned list
    (until :func:`main` puts the original back after the part)."""
    syncs: list[dict[str, Any]] = []
    original = ORIGINAL_SYNC

    def recording_sync(model, *, where="model"):
        resynced = original(model, where=where)
        syncs.append({"where": where, "checksums": replica_sync.model_checksums(model)})
        return resynced

    replica_sync.sync_model_ = recording_sync
    return syncs


def core_part(work: Path, rank: int) -> dict[str, Any]:
    from netcompress.cli.main import main
    from netcompress.training import distributed, replica_sync

    report: dict[str, Any] = {"world_size": distributed.world_size()}
    # 1. metrics are summed as counts: rank 0 has 3 of 4 right, rank 1 has 1 of 6
    counts = {"correct": 3, "total": 4} if rank == 0 else {"correct": 1, "total": 6}
    report["reduced"] = distributed.all_reduce_sums(counts)
    # 2. a checksum names the differing tensor; sync_model_ repairs it and says what it repaired
    torch.manual_seed(0)
    probe = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    if rank == 1:
        with torch.no_grad():
            probe[1].running_mean.add_(1.0)
    try:
        replica_sync.check_consistent(probe, where="probe")
        report["divergence_error"] = None
    except distributed.ReplicaDivergenceError as exc:
        report["divergence_error"] = str(exc)
    report["resynced"] = replica_sync.sync_model_(probe, where="probe")
    # 3. hook metrics over both ranks
    report["hook_rows"], report["hook_local"] = hook_metrics_fit()
    # 4. the recipe through the CLI, twice (a fresh run, then --resume), recording every sync
    syncs = _record_syncs(replica_sync)
    recipe = str(work / "ddp-tiny.yaml")
    report["exit_run"] = main(["run", recipe, "--quiet"])
    report["syncs_run"] = len(syncs)
    report["exit_resume"] = main(["run", recipe, "--quiet", "--resume"])
    report["syncs"] = syncs
    return report


def teacher_part(work: Path, rank: int) -> dict[str, Any]:
    from netcompress.cli.main import main
    from netcompress.training import distributed, replica_sync

    syncs = _record_syncs(replica_sync)
    recipe = str(work / "ddp-kd.yaml")
    out = work / "kd-run"
    report: dict[str, Any] = {"exit_run": main(["run", recipe, "--quiet", "--out", str(out)])}
    report["syncs_run"] = len(syncs)
    if rank == 0:  # killed after the teacher was cached, before the steps were recorded
        state = json.loads((out / "state.json").read_text())
        report["first_run_steps"] = len(state["finished_steps"])
        state["finished_steps"], state["stages"] = [], state["stages"][:1]
        (out / "state.json").write_text(json.dumps(state))
    distributed.barrier()
    report["exit_resume"] = main(["run", recipe, "--quiet", "--out", str(out), "--resume"])
    report["syncs"] = syncs
    return report


def sweep_part(work: Path, rank: int) -> dict[str, Any]:
    from netcompress.recipes import run_recipe
    from netcompress.training import replica_sync

    syncs = _record_syncs(replica_sync)
    result = run_recipe(str(work / "ddp-sweep.yaml"), out_dir=work / "sweep-run", progress=False)
    return {
        "run_dir": str(result.run_dir),
        "points": [str(p.run_dir) for p in result.points],
        "stages": result.stages,
        "syncs": syncs,
    }


PARTS = {"core": core_part, "teacher": teacher_part, "sweep": sweep_part}
ORIGINAL_SYNC: Any = None


def main(work: Path, parts: list[str]) -> None:
    from netcompress.training import Runtime, distributed, replica_sync

    global ORIGINAL_SYNC
    ORIGINAL_SYNC = replica_sync.sync_model_
    runtime = Runtime.from_env(device="cpu")
    for part in parts:
        report = {"rank": runtime.rank, **PARTS[part](work, runtime.rank)}
        replica_sync.sync_model_ = ORIGINAL_SYNC
        distributed.barrier()
        (work / f"rank{runtime.rank}-{part}.json").write_text(json.dumps(report))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
