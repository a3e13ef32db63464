"""A NaN/inf loss stops training with an error naming where, before it reaches the weights, and the
checkpoints of earlier epochs stay as they were (fit, distillation, QAT and the ``netcompress run`` path)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import netcompress as nc
from netcompress.core.errors import NonFiniteLossError
from netcompress.core.methods import MethodData, apply
from netcompress.quantization.qat import QATConfig
from netcompress.training import TrainConfig, fit
from netcompress.training.checkpointing import load_last

CFG = TrainConfig(epochs=3, lr=0.05, progress=False)


def _loader(*, nan_at: int | None = None, images: bool = False) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, 8, 8, generator=gen) if images else torch.randn(48, 8, generator=gen)
    y = torch.randint(0, 3, (48,), generator=gen)
    if nan_at is not None:
        x[nan_at] = float("nan")  # one sample of batch nan_at // 8 + 1
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def _net(seed: int = 0, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))


class NanFrom:
    """Cross entropy until the ``at``-th call (counted from 1), NaN from then on."""

    def __init__(self, at: int) -> None:
        self.calls, self.at = 0, at

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at and hasattr(self, "before_nan"):
            self.seen = self.before_nan()
        loss = F.cross_entropy(outputs, targets)
        return loss * float("nan") if self.calls >= self.at else loss


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_a_nan_loss_stops_fit_naming_epoch_and_step_and_keeps_the_checkpoints(tmp_path):
    model = _net()
    names = ("last.pt", "best.pt", "history.json")
    loss_fn = NanFrom(9)  # 6 batches per epoch: epoch 1 trains, the 3rd batch of epoch 2 gives NaN
    loss_fn.before_nan = lambda: {n: (tmp_path / n).read_bytes() for n in names}  # what epoch 1 wrote
    with pytest.raises(NonFiniteLossError) as info:
        fit(model, _loader(), val_loader=_loader(), config=CFG, checkpoint_dir=tmp_path, loss_fn=loss_fn)
    assert loss_fn.calls == 9
    assert {n: (tmp_path / n).read_bytes() for n in names} == loss_fn.seen  # not overwritten
    assert load_last(tmp_path, config_dict=CFG.to_dict())["epochs_done"] == 1
    message = str(info.value)
    assert message.startswith("fit: the training loss is nan at epoch 2/3, step 3/6 (lr ")
    assert "stopped before this step changed the weights" in message
    assert "The inputs and weights are finite: lower the lr" in message
    assert f"the checkpoints in {tmp_path}" in message and "\n" not in message
    assert _finite(model)


def test_nan_in_the_data_is_named_and_the_weights_stay_as_they_were():
    model = _net()
    before = copy.deepcopy(model)
    with pytest.raises(
        NonFiniteLossError, match=r"epoch 1/3, step 1/6 .* This batch's inputs hold 8 NaN/inf"
    ):
        fit(model, _loader(nan_at=3), config=CFG)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters(), strict=True))
    assert "nothing was saved" in str(pytest.raises(NonFiniteLossError, fit, _net(), _loader(nan_at=3)).value)


class BreakWeightsAfterFirstStep:
    """A hook whose after_step sets one weight to inf once: the next loss is not finite."""

    def __init__(self) -> None:
        self.done = False

    def after_step(self, model: nn.Module) -> None:
        if not self.done:
            with torch.no_grad():
                model[0].weight[0, 0] = float("inf")
            self.done = True


def test_weights_that_diverged_during_training_are_named():
    model = _net()
    with pytest.raises(
        NonFiniteLossError, match=r"step 2/6 .* weights already diverged \(1 parameter\(s\).*'0.weight'"
    ):
        fit(model, _loader(), config=CFG, hooks=[BreakWeightsAfterFirstStep()])


def test_distillation_stops_on_a_nan_teacher_before_the_student_changes():
    class NanTeacher(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 3), float("nan"))

    student = _net()
    before = copy.deepcopy(student)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1/2, step 1/6"):
        nc.distill_(student, NanTeacher(), _loader(), epochs=2, lr=0.1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), before.parameters(), strict=True))


def test_qat_trains_through_the_same_check():
    # NaN inputs do not reach a QAT loss (the input quantizer clamps them), NaN soft targets do
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(48, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    soft = torch.softmax(torch.randn(48, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    soft[20] = float("nan")
    train = DataLoader(TensorDataset(x, soft), batch_size=8)
    config = QATConfig.from_dict({"epochs": 1, "lr": 0.01, "progress": False}, where="test")
    data = MethodData(train_loader=train, calib_loader=_loader(images=True))
    with pytest.raises(NonFiniteLossError, match=r"epoch 1/1, step 3/6 .* targets hold NaN/inf values"):
        apply(model, config, data)


def test_netcompress_run_names_the_step_in_one_line_and_keeps_the_finished_steps(tmp_path, capsys):
    from netcompress.cli.main import main

    recipe = {
        "name": "diverges",
        "model": {"name": "digits_cnn"},
        "data": {"name": "digits", "batch_size": 64},
        "steps": [
            {"op": "prune", "method": "l1_unstructured", "amount": 0.5},
            {"op": "train", "method": "finetune", "epochs": 1, "lr": 1.0e30, "progress": False},
        ],
        "evaluate": {"latency": False},
        "report": {"plots": False},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert main(["run", str(path), "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("netcompress run: error: step 2 (train/finetune): fit: the training loss is ")
    assert "at epoch 1/1, step " in err and "stopped before this step changed the weights" in err
    assert (out / "steps" / "01-prune-l1_unstructured" / "model.pt").exists()  # step 1's output is kept
