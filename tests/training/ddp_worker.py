"""Run by tests/training/test_distributed.py under ``torchrun --nproc_per_node=2`` (not a test itself).

Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py RECIPE OUT_JSON_DIR

Each rank writes ``rank<R>.json``: the metric all-reduce and checksum unit checks, then the checksums
it held after every model synchronisation of a recipe run through the CLI (``netcompress run``), a
``--resume`` of that run, and the final model's checksums.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from netcompress.cli.main import main
from netcompress.training import Runtime, distributed, replica_sync

recipe, out = sys.argv[1], Path(sys.argv[2])
runtime = Runtime.from_env(device="cpu")
rank = runtime.rank
report: dict = {"rank": rank, "world_size": runtime.world_size}

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

# 3. the recipe through the CLI, twice (a fresh run, then --resume), recording every sync
syncs: list = []
original = replica_sync.sync_model_


def recording_sync(model, *, where="model"):
    resynced = original(model, where=where)
    syncs.append({"where": where, "checksums": replica_sync.model_checksums(model)})
    return resynced


replica_sync.sync_model_ = recording_sync
report["exit_run"] = main(["run", recipe, "--quiet"])
report["syncs_run"] = len(syncs)
report["exit_resume"] = main(["run", recipe, "--quiet", "--resume"])
report["syncs"] = syncs
distributed.barrier()
(out / f"rank{rank}.json").write_text(json.dumps(report))
distributed.shutdown()
