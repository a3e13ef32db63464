"""Scale-out: two CPU processes (gloo) under torchrun run a compression recipe to the same result.

One ``torchrun --nproc_per_node=2`` launch (module fixture) runs tests/training/ddp_worker.py: unit
checks of the metric all-reduce and of the checksum naming a differing tensor, then a tiny recipe
(train, channel prune, fine-tune, static quantization, distillation) through ``netcompress run`` and
its ``--resume``. The same recipe runs in this process for the single-process reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from netcompress.recipes import run_recipe
from netcompress.training import replica_sync

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

RECIPE = {
    "name": "ddp-tiny",
    "seed": 0,
    "model": {"name": "digits_cnn", "num_classes": 4, "width": 0.5},
    "data": {
        "name": "synthetic",
        "num_samples": 320,
        "input_shape": [1, 8, 8],
        "num_classes": 4,
        "separation": 1.0,
        "batch_size": 32,  # the global batch: 16 per rank under torchrun --nproc_per_node=2
        "eval_batch_size": 64,
        "calib_batches": 2,
    },
    "steps": [
        {"op": "train", "method": "supervised", "epochs": 3, "lr": 0.05, "progress": False},
        {"op": "prune", "method": "channel", "ratio": 0.5},
        {"op": "train", "method": "finetune", "epochs": 2, "lr": 0.02, "progress": False},
        {"op": "quantize", "method": "ptq_static", "bits": 8},
        {"op": "distill", "method": "soft_targets", "epochs": 1, "lr": 0.005, "teacher": {"step": 1}},
    ],
    "evaluate": {"latency": False},
    "report": {"plots": False},
}
STEP_WHERE = [f"after step {i + 1}" for i in range(len(RECIPE["steps"]))]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    recipe = work / "ddp-tiny.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NETCOMPRESS_DIST_TIMEOUT_S": "120"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(HERE / "ddp_worker.py"), str(recipe), str(work)],
        cwd=work,  # runs/<name> is made under the working folder: both ranks would race for it
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # a hang fails the test instead of blocking the suite
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((work / f"rank{r}.json").read_text()) for r in range(2)]
    return work, reports, proc.stdout


def test_metrics_are_summed_as_counts_not_averaged(ddp_run):
    _, reports, _ = ddp_run
    for report in reports:
        assert report["world_size"] == 2
        # 4 of 10 right; the mean of the ranks' accuracies (0.75 and 0.1667) would be 0.458
        assert report["reduced"] == {"correct": 4.0, "total": 10.0}


def test_checksum_names_the_first_differing_tensor_and_sync_repairs_it(ddp_run):
    _, reports, _ = ddp_run
    for report in reports:  # every rank raises, so no rank is left waiting in a collective
        assert (
            report["divergence_error"]
            == "probe: rank 1 differs from rank 0 in tensor '1.running_mean' (first of 1 differing)"
        )
        assert report["resynced"] == ["1.running_mean"]


def test_recipe_writes_one_run_folder_and_resumes(ddp_run):
    work, reports, stdout = ddp_run
    assert [r["exit_run"] for r in reports] == [0, 0] and [r["exit_resume"] for r in reports] == [0, 0]
    assert [p.name for p in (work / "runs").iterdir()] == ["ddp-tiny"]  # not ddp-tiny and ddp-tiny-2
    run = work / "runs" / "ddp-tiny"
    assert stdout.count("run folder: ") == 2  # rank 0 alone prints, once per run
    state = json.loads((run / "state.json").read_text())
    assert [s["index"] for s in state["finished_steps"]] == [0, 1, 2, 3, 4]
    for step in state["finished_steps"]:
        assert step["summary"]["replicas"]["world_size"] == 2
    # choices made the same on both ranks: pruning and calibration needed no repair
    assert state["finished_steps"][1]["summary"]["replicas"]["resynced_tensors"] == 0
    assert state["finished_steps"][3]["summary"]["replicas"]["resynced_tensors"] == 0
    assert all(s["device"] == "cpu" for s in state["stages"])
    assert (run / "steps" / "05-distill-soft_targets" / "model.pt").exists()


def test_every_rank_holds_identical_state_after_every_step(ddp_run):
    _, (rank0, rank1), _ = ddp_run
    assert rank0["syncs"] == rank1["syncs"]  # same syncs, same per-tensor checksums
    wheres = [s["where"] for s in rank0["syncs"][: rank0["syncs_run"]]]
    for label in STEP_WHERE:
        assert any(w.startswith(label) for w in wheres), label
    after = {
        s["where"].split(" (")[0]: s["checksums"] for s in rank0["syncs"] if s["where"].startswith("after")
    }
    assert after["after step 2"] != after["after step 1"]  # the pruned model is what the ranks agreed on
    quant = [n for n in after["after step 4"] if n.endswith((".scale", ".zero_point"))]
    assert quant, "the quantizer buffers are among the checked tensors"
    assert any(".observer." in n for n in after["after step 4"]), (
        "observer ranges outside buffers are checked too"
    )


def test_final_accuracy_matches_single_process_with_the_same_global_batch(ddp_run, tmp_path):
    work, _, _ = ddp_run
    ddp_state = json.loads((work / "runs" / "ddp-tiny" / "state.json").read_text())
    single = run_recipe(RECIPE, out_dir=tmp_path / "single", progress=False)
    ddp_acc = [s["accuracy"] for s in ddp_state["stages"]]
    one_acc = [s["accuracy"] for s in single.stages]
    assert ddp_acc[0] == one_acc[0]  # the same initial model (seeded build), measured the same
    assert ddp_acc[-1] > 0.6 and one_acc[-1] > 0.6
    assert abs(ddp_acc[-1] - one_acc[-1]) <= 0.1, (ddp_acc, one_acc)


def test_single_process_sync_is_a_no_op_and_checksums_are_exact():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    before = replica_sync.model_checksums(model)
    assert replica_sync.sync_model_(model) == []
    assert replica_sync.model_checksums(model) == before
    with torch.no_grad():
        model.bias[0] += 1e-7  # one ulp-sized change is a different checksum
    after = replica_sync.model_checksums(model)
    assert replica_sync.first_difference(before, after) == "bias"
