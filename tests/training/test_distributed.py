"""Scale-out: two CPU processes (gloo) under torchrun run compression recipes to the same result.

One ``torchrun --nproc_per_node=2`` launch (module fixture, default suite) runs tests/training/ddp_worker.py
part ``core``: unit checks of the metric all-reduce and of the checksum naming a differing tensor, hook
metrics of a ``fit``, then a tiny recipe (train, channel prune, fine-tune, static quantization,
distillation) through ``netcompress run`` and its ``--resume``. The same recipe and fit run in this
process for the single-process reference. The same launch runs part ``teacher``: distillation from a
teacher trained in the step, then QAT, and a resume that finds the cached ``teacher.pt``. A second
launch (``slow``) runs a 2-point sweep.
"""

from __future__ import annotations

import importlib.util
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

DATA = {
    "name": "synthetic",
    "num_samples": 320,
    "input_shape": [1, 8, 8],
    "num_classes": 4,
    "separation": 1.0,
    "batch_size": 32,  # the global batch: 16 per rank under torchrun --nproc_per_node=2
    "eval_batch_size": 64,
    "calib_batches": 2,
}
MODEL = {"name": "digits_cnn", "num_classes": 4, "width": 0.5}
QUIET = {"evaluate": {"latency": False}, "report": {"plots": False}}
RECIPE = {
    "name": "ddp-tiny",
    "seed": 0,
    "model": MODEL,
    "data": DATA,
    "steps": [
        {"op": "train", "method": "supervised", "epochs": 3, "lr": 0.05, "progress": False},
        {"op": "prune", "method": "channel", "ratio": 0.5},
        {"op": "train", "method": "finetune", "epochs": 2, "lr": 0.02, "progress": False},
        {"op": "quantize", "method": "ptq_static", "bits": 8},
        {"op": "distill", "method": "soft_targets", "epochs": 1, "lr": 0.005, "teacher": {"step": 1}},
    ],
    **QUIET,
}
STEP_WHERE = [f"after step {i + 1}" for i in range(len(RECIPE["steps"]))]
TEACHER = {
    "model": "digits_cnn",
    "kwargs": {"width": 0.5},
    "train": {"epochs": 1, "lr": 0.05, "progress": False},
}
KD_RECIPE = {
    "name": "ddp-kd",
    "seed": 0,
    "model": MODEL,
    "data": {**DATA, "num_samples": 192},
    "steps": [
        {"op": "distill", "method": "soft_targets", "epochs": 1, "lr": 0.01, "teacher": TEACHER},
        {"op": "quantize", "method": "qat", "epochs": 1, "lr": 0.005, "num_calib_batches": 2},
    ],
    **QUIET,
}
SWEEP_RECIPE = {
    "name": "ddp-sweep",
    "seed": 0,
    "model": MODEL,
    "data": {**DATA, "num_samples": 192},
    "steps": [
        {"op": "train", "method": "supervised", "epochs": 1, "lr": 0.05, "progress": False},
        {"op": "prune", "method": "channel", "ratio": 0.25},
    ],
    "sweep": {"steps.1.ratio": [0.25, 0.5]},
    **QUIET,
}


def _launch(work: Path, *parts: str) -> tuple[dict[str, list[dict]], str]:
    """Run ddp_worker.py's ``parts`` in two gloo processes; each rank's report per part."""
    for recipe in (RECIPE, KD_RECIPE, SWEEP_RECIPE):
        (work / f"{recipe['name']}.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NETCOMPRESS_DIST_TIMEOUT_S": "120"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(HERE / "ddp_worker.py"), str(work), *parts],
        cwd=work,  # runs/<name> is made under the working folder: both ranks would race for it
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a hang fails the test instead of blocking the suite
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = {p: [json.loads((work / f"rank{r}-{p}.json").read_text()) for r in range(2)] for p in parts}
    return reports, proc.stdout


def _worker_module():
    spec = importlib.util.spec_from_file_location("ddp_worker_for_tests", HERE / "ddp_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ddp_launch(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    reports, stdout = _launch(work, "core", "teacher")
    return work, reports, stdout


@pytest.fixture(scope="module")
def ddp_run(ddp_launch):
    work, reports, stdout = ddp_launch
    return work, reports["core"], stdout


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp-sweep")
    reports, _ = _launch(work, "sweep")
    return work, reports["sweep"]


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
    assert stdout.count("run folder: runs/ddp-tiny\n") == 2  # rank 0 alone prints, once per run
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


def test_hook_metrics_are_averaged_over_ranks_and_match_one_process(ddp_run):
    _, (rank0, rank1), _ = ddp_run
    (row,), (other,) = rank0["hook_rows"], rank1["hook_rows"]
    assert {**row, "time_s": 0} == {**other, "time_s": 0}  # one global history on every rank (but the clock)
    # rank 0 trained on the even samples (target 0), rank 1 on the odd ones (target 3)
    assert rank0["hook_local"]["mean_target"] == 0.0 and rank1["hook_local"]["mean_target"] == 3.0
    assert row["mean_target"] == 1.5
    assert row["kd_soft_loss"] not in (
        rank0["hook_local"]["kd_soft_loss"],
        rank1["hook_local"]["kd_soft_loss"],
    )
    (single,), local = _worker_module().hook_metrics_fit()  # one process, the same global batches
    assert local["mean_target"] == single["mean_target"] == 1.5
    for key in ("kd_soft_loss", "kd_hard_loss", "teacher_train_acc", "train_loss", "weight_sum"):
        assert row[key] == pytest.approx(single[key], rel=1e-5, abs=1e-7), key


def test_resume_reuses_the_cached_teacher_on_every_rank(ddp_launch):
    work, reports, _ = ddp_launch
    rank0, rank1 = reports["teacher"]
    assert (
        [r["exit_run"] for r in reports["teacher"]]
        == [0, 0]
        == [r["exit_resume"] for r in reports["teacher"]]
    )
    assert rank0["first_run_steps"] == 2
    assert rank0["syncs"] == rank1["syncs"]  # the same syncs in the same order, the same checksums
    first, again = rank0["syncs"][: rank0["syncs_run"]], rank0["syncs"][rank0["syncs_run"] :]

    def where(syncs, label):
        return [s["checksums"] for s in syncs if s["where"] == label]

    trained = where(first, "teacher (trained here)")
    assert len(trained) == 1 and not where(first, "teacher (reused teacher.pt)")
    # the resume found teacher.pt on rank 0: no rank trained the teacher again, both hold the cached one
    assert where(again, "teacher (reused teacher.pt)") == trained
    assert not where(again, "teacher (trained here)") and not where(again, "teacher (before training)")
    assert not any(name.startswith("module.") for name in trained[0])  # never a DDP wrapper
    finals = [s["checksums"] for s in rank0["syncs"] if s["where"].startswith("after step 2")]
    assert len(finals) == 2 and finals[0] == finals[1]  # the resumed run ends where the first one did
    assert any(n.endswith(".scale") for n in finals[0]), "QAT's quantizer buffers are checked"
    state = json.loads((work / "kd-run" / "state.json").read_text())
    assert [s["index"] for s in state["finished_steps"]] == [0, 1]
    assert (work / "kd-run" / "steps" / "01-distill-soft_targets" / "teacher.pt").exists()


@pytest.mark.slow
def test_a_sweep_runs_every_point_on_every_rank_and_rank_0_writes(ddp_sweep):
    work, (rank0, rank1) = ddp_sweep
    assert rank0["stages"] == rank1["stages"] and rank0["points"] == rank1["points"]
    assert rank0["syncs"] == rank1["syncs"]
    run = work / "sweep-run"
    assert sorted(p.name for p in (run / "points").iterdir()) == ["00-ratio=0.25", "01-ratio=0.5"]
    assert len(json.loads((run / "metrics.json").read_text())["points"]) == 2
    second = json.loads((run / "points" / "01-ratio=0.5" / "state.json").read_text())
    assert "reused_from" in second["finished_steps"][0]  # the shared training step ran once, on rank 0's disk
    assert "after step 1 (reused)" in [s["where"] for s in rank0["syncs"]]
    assert rank0["stages"][0]["params"] > rank0["stages"][1]["params"]
    assert not (work / "runs").exists()


def test_reduce_metrics_weights_by_samples_and_keeps_shared_values(monkeypatch):
    """Two ranks simulated in one process: what each would hand to all_gather_object."""
    from netcompress.training import distributed

    ranks = [
        (16.0, {"loss": 0.5, "acc": [1.0, 0.0], "sparsity": 0.1, "name": "a", "only0": 2.0}),
        (48.0, {"loss": 0.7, "acc": [0.0, 1.0], "sparsity": 0.1, "name": "b", "only1": 4.0}),
    ]
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(
        distributed.dist, "all_gather_object", lambda out, _: out.__setitem__(slice(None), ranks)
    )
    reduced = distributed.reduce_metrics(ranks[0][1], weight=16)
    assert list(reduced) == ["loss", "acc", "sparsity", "name", "only0", "only1"]
    assert reduced["loss"] == pytest.approx((16 * 0.5 + 48 * 0.7) / 64)
    assert reduced["acc"] == [0.25, 0.75]
    assert reduced["sparsity"] == 0.1  # alike on every rank: kept exactly, not re-averaged
    assert reduced["name"] == "a" and reduced["only0"] == 2.0 and reduced["only1"] == 4.0
    ranks[1][1]["acc"] = [0.0]
    with pytest.raises(distributed.ReplicaDivergenceError, match="'acc'"):
        distributed.reduce_metrics(ranks[0][1], weight=16)
    monkeypatch.setattr(distributed, "is_distributed", lambda: False)
    assert distributed.reduce_metrics({"loss": 0.5}, weight=16) == {"loss": 0.5}
