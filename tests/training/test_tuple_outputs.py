"""Models that return a tuple whose first item is the logits (MONAI's ViT: (logits, hidden states); pytorch-tabnet's
TabNet: (logits, sparsity loss)) train under the default cross entropy on that first item; fit crashed with
``cross_entropy_loss(): argument 'input' must be Tensor, not tuple``. A user's ``loss_fn`` still gets the tuple."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import netcompress as nc
from netcompress.training import TrainConfig


class LogitsAndStates(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = torch.tanh(self.body(x))
        return self.head(h), [h, h * 2]


class LogitsAndAuxLoss(LogitsAndStates):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits, states = super().forward(x)
        return logits, states[0].abs().mean()


X = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def test_default_loss_is_cross_entropy_of_the_first_item():
    for cls in (LogitsAndStates, LogitsAndAuxLoss):
        torch.manual_seed(0)
        model = cls()
        want = float(F.cross_entropy(model(X)[0], Y))
        hist = nc.fit_(model, [(X, Y)], config=TrainConfig(epochs=1, lr=0.0, progress=False, weight_decay=0))
        assert abs(hist.last["train_loss"] - want) < 1e-5
        assert hist.last["train_acc"] == float((model(X)[0].argmax(1) == Y).float().mean())
        before = model.head.weight.detach().clone()
        nc.fit_(model, [(X, Y)], config=TrainConfig(epochs=1, lr=0.1, progress=False, weight_decay=0))
        assert not torch.equal(before, model.head.weight)


def test_a_user_loss_gets_the_whole_tuple():
    seen = []

    def loss_fn(outputs, targets):  # noqa: ANN001, ANN202
        seen.append(type(outputs))
        logits, aux = outputs
        return F.cross_entropy(logits, targets) + aux

    torch.manual_seed(0)
    model = LogitsAndAuxLoss()
    want = float(loss_fn(model(X), Y))
    hist = nc.fit_(model, [(X, Y)], config=TrainConfig(epochs=1, lr=0.0, progress=False, weight_decay=0),
                   loss_fn=loss_fn)  # fmt: skip
    assert seen == [tuple, tuple] and abs(hist.last["train_loss"] - want) < 1e-5



def test_distillation_reads_the_first_item_of_tuple_outputs():
    # the teacher's tuple was refused ("teacher returned tuple; distillation needs a logits tensor")
    torch.manual_seed(0)
    teacher, student = LogitsAndAuxLoss(), LogitsAndAuxLoss()
    s = nc.distill_(student, teacher, [(X, Y)], epochs=1, lr=0.0, alpha=1.0, progress=False)
    assert s["final_train_acc"] == float((student(X)[0].argmax(1) == Y).float().mean())
    assert s["teacher_train_acc"] == float((teacher(X)[0].argmax(1) == Y).float().mean())
    before = student.head.weight.detach().clone()
    nc.distill_(student, teacher, [(X, Y)], epochs=1, lr=0.1, alpha=1.0, progress=False)
    assert not torch.equal(before, student.head.weight)
