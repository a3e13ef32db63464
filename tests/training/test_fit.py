"""fit: repeatable runs, exact resume, hooks, best-epoch keeping, checkpoints, the recipe step.

Everything trains a 8-16-3 MLP with dropout on 96 samples for a few epochs (< 1 s per test).
Helper classes are module-level so the objects pickle.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netcompress.core.errors import CheckpointError, ConfigError, DataError
from netcompress.training import History, TrainConfig, fit, lr_at
from netcompress.training import progress as progress_mod
from netcompress.training.loop import _validate
from tests.crash_hooks import CrashAt

NUM_FEATURES, NUM_CLASSES, BATCH = 8, 3, 16


def make_data(*, n_train: int = 96, n_val: int = 48) -> tuple[TensorDataset, TensorDataset]:
    """Linearly separable-ish 3-class data from a fixed random teacher."""
    gen = torch.Generator().manual_seed(123)
    teacher = torch.randn(NUM_FEATURES, NUM_CLASSES, generator=gen)
    x = torch.randn(n_train + n_val, NUM_FEATURES, generator=gen)
    y = (x @ teacher).argmax(dim=1)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def make_loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    train, val = make_data()
    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=BATCH, shuffle=True, generator=gen),
        DataLoader(val, batch_size=32, shuffle=False),
    )


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(NUM_FEATURES, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, NUM_CLASSES))


def rows_without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class ConstantPenalty:
    """Adds a constant to the loss: train_loss must rise by exactly that much."""

    def __init__(self, value: float) -> None:
        self.value = value

    def loss(self, model, inputs, outputs, targets, loss):
        return loss + self.value


class KeepZero:
    """Zeroes the first ``k`` columns of the first Linear after every step (a pruning mask)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def after_step(self, model):
        with torch.no_grad():
            model[0].weight[:, : self.k] = 0.0


class ZeroGrads:
    def after_backward(self, model):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)


class CountingHook:
    """Keeps a batch counter across epochs (state that resume must bring back)."""

    def __init__(self) -> None:
        self.batches = 0

    def after_step(self, model):
        self.batches += 1

    def epoch_end(self, model, epoch):
        return {"batches_seen": self.batches, "weight_norm": model[-1].weight.norm()}

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]


class Sabotage:
    """From epoch ``start`` on, forces every prediction to class 0: validation accuracy drops."""

    def __init__(self, start: int) -> None:
        self.start, self.epoch, self.snapshots = start, 0, {}

    def epoch_start(self, model, epoch):
        self.epoch = epoch

    def after_step(self, model):
        if self.epoch >= self.start:
            with torch.no_grad():
                model[-1].weight.zero_()
                model[-1].bias.copy_(torch.tensor([10.0, 0.0, 0.0]))

    def epoch_end(self, model, epoch):
        self.snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return {}


class ScaledCrossEntropy:
    """Cross entropy of ``outputs * scale``: trains an extra parameter outside the model."""

    def __init__(self) -> None:
        self.scale = nn.Parameter(torch.tensor(1.0))

    def __call__(self, outputs, targets):
        return nn.functional.cross_entropy(outputs * self.scale, targets)


def quiet(**changes) -> TrainConfig:
    base = {"epochs": 3, "lr": 0.1, "progress": False, "schedule": "constant", "weight_decay": 0.0}
    return TrainConfig(**{**base, **changes})


# --- repeatability -------------------------------------------------------------------------


def test_same_seed_gives_identical_history_and_weights():
    runs = []
    for _ in range(2):
        model, (train, val) = make_model(), make_loaders()
        history = fit(model, train, val_loader=val, config=quiet(schedule="cosine", seed=7))
        runs.append((model, history))
    (m1, h1), (m2, h2) = runs
    assert rows_without_time(h1.rows) == rows_without_time(h2.rows)  # exact float equality
    assert_same_weights(m1, m2)
    assert [r["epoch"] for r in h1.rows] == [0, 1, 2]
    assert h1.rows[-1]["train_loss"] < h1.rows[0]["train_loss"]


def test_other_seed_gives_other_losses():
    # dropout draws from torch's RNG, which fit seeds from config.seed
    (train, _), (train2, _) = make_loaders(), make_loaders()
    h1 = fit(make_model(), train, config=quiet(seed=0))
    h2 = fit(make_model(), train2, config=quiet(seed=1))
    assert h1.rows[0]["train_loss"] != h2.rows[0]["train_loss"]


# --- resume --------------------------------------------------------------------------------


def test_resume_after_one_epoch_matches_three_uninterrupted(tmp_path):
    # step schedule: the rate of an epoch does not depend on the total, so 1 + 2 epochs == 3
    config = quiet(schedule="step", step_size=1, gamma=0.5, keep_best=True, weight_decay=5e-4)
    full_model, (train, val) = make_model(), make_loaders()
    full = fit(full_model, train, val_loader=val, config=config)

    train, val = make_loaders()
    fit(make_model(), train, val_loader=val, config=config.replace(epochs=1), checkpoint_dir=tmp_path)
    assert len(History.from_json(tmp_path / "history.json")) == 1
    resumed_model = make_model(seed=99)  # a fresh process builds its model anew
    train, val = make_loaders()
    resumed = fit(resumed_model, train, val_loader=val, config=config, checkpoint_dir=tmp_path, resume=True)

    assert rows_without_time(resumed.rows) == rows_without_time(full.rows)
    assert resumed.best_epoch == full.best_epoch
    assert_same_weights(resumed_model, full_model)


def test_resume_after_crash_restores_schedule_rng_hooks_and_extra_parameters(tmp_path):
    config = quiet(schedule="cosine", warmup_epochs=1, epochs=3, keep_best=False, optimizer="adamw", lr=0.01)

    def run(hooks, directory=None, resume=False, model_seed=0):
        model, (train, val) = make_model(seed=model_seed), make_loaders()
        loss_fn = ScaledCrossEntropy()
        history = fit(
            model, train, val_loader=val, config=config, hooks=hooks, extra_parameters=[loss_fn.scale],
            loss_fn=loss_fn, checkpoint_dir=directory, resume=resume,
        )  # fmt: skip
        return model, history, loss_fn.scale.item()

    full_model, full, full_scale = run([CountingHook()])
    with pytest.raises(KeyboardInterrupt):
        run([CountingHook(), CrashAt(2)], directory=tmp_path)
    model, history, scale = run([CountingHook()], directory=tmp_path, resume=True, model_seed=5)

    assert rows_without_time(history.rows) == rows_without_time(full.rows)
    assert history.rows[-1]["batches_seen"] == 3 * 6
    assert scale == full_scale != 1.0
    assert_same_weights(model, full_model)


def test_resume_refuses_a_changed_config(tmp_path):
    train, _ = make_loaders()
    fit(make_model(), train, config=quiet(epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"lr: 0\.1 -> 0\.2"):
        fit(make_model(), train, config=quiet(lr=0.2), checkpoint_dir=tmp_path, resume=True)


def test_resume_without_checkpoint_starts_fresh_and_needs_a_folder(tmp_path):
    train, _ = make_loaders()
    history = fit(make_model(), train, config=quiet(epochs=1), checkpoint_dir=tmp_path / "new", resume=True)
    assert len(history) == 1 and (tmp_path / "new" / "last.pt").exists()
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        fit(make_model(), train, config=quiet(), resume=True)


# --- hooks ---------------------------------------------------------------------------------


def test_loss_hook_adds_exactly_its_penalty():
    # lr=0: the weights never move, so both runs see the same base loss
    (train, _), (train2, _) = make_loaders(), make_loaders()
    base = fit(make_model(), train, config=quiet(lr=0.0, epochs=1))
    penalised = fit(make_model(), train2, config=quiet(lr=0.0, epochs=1), hooks=[ConstantPenalty(5.0)])
    assert penalised.rows[0]["train_loss"] - base.rows[0]["train_loss"] == pytest.approx(5.0, abs=1e-5)


def test_after_step_mask_keeps_weights_at_zero_and_the_rest_trains():
    model, (train, _) = make_model(), make_loaders()
    before = model[0].weight.detach().clone()
    fit(model, train, config=quiet(weight_decay=5e-4), hooks=[KeepZero(3)])
    w = model[0].weight.detach()
    assert torch.count_nonzero(w[:, :3]) == 0
    assert (w[:, 3:] - before[:, 3:]).abs().max() > 1e-3


def test_after_backward_can_cancel_every_update():
    model, (train, _) = make_model(), make_loaders()
    before = copy.deepcopy(model)
    fit(model, train, config=quiet(), hooks=[ZeroGrads()])  # momentum on zero grads, no decay: no move
    assert_same_weights(model, before)


def test_epoch_end_metrics_join_the_rows_and_may_not_overwrite_core_keys():
    model, (train, _) = make_model(), make_loaders()
    history = fit(model, train, config=quiet(epochs=2), hooks=[CountingHook()])
    assert history.column("batches_seen") == [6, 12]
    assert isinstance(history.rows[-1]["weight_norm"], float)  # tensors become numbers

    class Clash:
        def epoch_end(self, model, epoch):
            return {"val_acc": 1.0}

    with pytest.raises(ConfigError, match="val_acc"):
        fit(make_model(), train, config=quiet(epochs=1), hooks=[Clash()])


# --- keep_best, checkpoints, numbers of the loop ------------------------------------------


@pytest.mark.parametrize("keep_best", [True, False])
def test_keep_best_restores_the_best_epoch(tmp_path, keep_best):
    model, (train, val) = make_model(), make_loaders()
    sabotage = Sabotage(start=1)
    history = fit(
        model, train, val_loader=val, config=quiet(lr=0.3, keep_best=keep_best), hooks=[sabotage],
        checkpoint_dir=tmp_path,
    )  # fmt: skip
    accs = history.column("val_acc")
    class0 = (make_data()[1].tensors[1] == 0).float().mean().item()
    assert accs[1] == accs[2] == pytest.approx(class0) and accs[0] > class0 + 0.1
    assert history.best_epoch == 0
    expected = sabotage.snapshots[0] if keep_best else sabotage.snapshots[2]
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["epoch"] == 0 and torch.equal(best["model"]["3.bias"], sabotage.snapshots[0]["3.bias"])
    on_disk = History.from_json(tmp_path / "history.json")
    assert on_disk.rows == history.rows and on_disk.best_epoch == 0


def test_history_rows_hold_the_scheduled_lr_and_label_smoothed_loss():
    train, _ = make_loaders()
    config = quiet(lr=0.0, epochs=1, label_smoothing=0.1)
    model = make_model()
    history = fit(model, train, config=config)
    model.eval()  # dropout off: with lr=0 the train-mode loss differs only through dropout
    x, y = make_data()[0].tensors
    expected = nn.functional.cross_entropy(model(x), y, label_smoothing=0.1).item()
    row = history.rows[0]
    assert set(row) == {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "time_s"}
    assert row["val_acc"] is None and 0.0 <= row["train_acc"] <= 1.0
    assert abs(row["train_loss"] - expected) < 0.15  # dropout noise only

    cosine = quiet(lr=0.1, epochs=3, schedule="cosine")
    h = fit(make_model(), make_loaders()[0], config=cosine)
    assert h.column("lr") == [lr_at(cosine, step=6 * e, steps_per_epoch=6) for e in range(3)]


def test_grad_clip_limits_the_update_norm():
    x, y = make_data()[0].tensors
    loader = DataLoader(TensorDataset(x[:16] * 100, y[:16]), batch_size=16)
    model = make_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    config = quiet(epochs=1, lr=1.0, momentum=0.0, grad_clip_norm=1e-3)
    fit(model.eval(), loader, config=config)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(1e-3, rel=1e-4)


def test_validate_counts_correct_predictions():
    model, (_, val) = make_model().eval(), make_loaders()
    x, y = make_data()[1].tensors
    with torch.no_grad():
        logits = model(x)
    acc, loss = _validate(model, val, torch.device("cpu"))
    assert acc == (logits.argmax(1) == y).sum().item() / len(y)
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, y).item(), abs=1e-6)


def test_trained_model_deepcopies_and_pickles():
    model, (train, _) = make_model(), make_loaders()
    fit(model, train, config=quiet(epochs=1), hooks=[CountingHook()])
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert_same_weights(loaded, copy.deepcopy(model))


# --- bad input -------------------------------------------------------------------------------


def test_bad_loaders_are_data_errors():
    with pytest.raises(DataError, match="empty"):
        fit(make_model(), DataLoader(TensorDataset(torch.zeros(0, 8), torch.zeros(0))), config=quiet())
    with pytest.raises(DataError, match=r"\(inputs, targets\) pairs"):
        fit(make_model(), [torch.zeros(4, 8)], config=quiet())
    with pytest.raises(DataError, match="no len"):
        fit(make_model(), iter([(torch.zeros(4, 8), torch.zeros(4, dtype=torch.long))]), config=quiet())


def test_dict_config_with_unknown_key_names_it():
    with pytest.raises(ConfigError, match="'epoch'.*did you mean 'epochs'"):
        fit(make_model(), make_loaders()[0], config={"epoch": 3})


# --- progress --------------------------------------------------------------------------------


def test_non_tty_prints_one_line_per_epoch(capsys, monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert progress_mod.reporter_kind(progress=True) == "lines"
    assert progress_mod.reporter_kind(progress=False) == "silent"
    fit(make_model(), make_loaders()[0], config=quiet(epochs=2, progress=True))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2  lr 0.1  loss ")


def test_rich_reporter_advances_once_per_batch(monkeypatch):
    made = []

    def rich_reporter(*, progress):
        made.append(progress_mod.RichReporter())
        return made[-1]

    monkeypatch.setattr("netcompress.training.loop.make_reporter", rich_reporter)
    fit(make_model(), make_loaders()[0], val_loader=make_loaders()[1], config=quiet(epochs=2, progress=True))
    tasks = made[0]._progress.tasks
    assert [t.completed for t in tasks] == [6, 6]
    assert "val_acc" in tasks[-1].fields["metrics"]


# --- recipe step -----------------------------------------------------------------------------


def test_train_step_runs_fit_and_returns_a_json_summary(tmp_path):
    import netcompress.training.supervised  # noqa: F401  (registers the steps)
    from netcompress.core.methods import MethodData, find_method

    train, val = make_loaders()
    ctx = MethodData(
        train_loader=train, val_loader=val, example_inputs=torch.zeros(1, NUM_FEATURES), out_dir=tmp_path, num_classes=NUM_CLASSES, seed=11, progress=False,
    )  # fmt: skip
    for method, step_dir in (("supervised", tmp_path), ("finetune", tmp_path / "ft")):
        spec = find_method("train", method, where="test")
        config = spec.config.from_dict({"epochs": 2, "lr": 0.1, "progress": True})
        hook = CountingHook()
        result = spec.fn(
            make_model(), config, dataclasses.replace(ctx, out_dir=step_dir, extras={"hooks": [hook]})
        )
        summary = json.loads(json.dumps(result.summary))
        assert summary["epochs"] == 2 and summary["config"]["seed"] == 11
        assert summary["config"]["progress"] is False
        assert summary["best_val_acc"] == max(r["val_acc"] for r in result.history)
        assert [r["batches_seen"] for r in result.history] == [6, 12]
        assert (step_dir / "checkpoints" / "last.pt").exists()
