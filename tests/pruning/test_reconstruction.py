"""reconstruct_weights: exact where the pruned layer can represent the original, closer where it cannot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError, DataError
from netcompress.pruning.channel import ChannelPruneConfig, channel_prune
from netcompress.pruning.reconstruction import reconstruct_weights


def _loader(
    shape: tuple[int, ...], batches: int = 4, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=gen), torch.zeros(shape[0])) for _ in range(batches)]


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


def test_linear_network_is_reconstructed_exactly() -> None:
    # no activation: the 4 kept hidden units still span the 4-d input, so the original map is reachable
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    small, summary = channel_prune(
        model, torch.randn(2, 4), ChannelPruneConfig(ratio=0.5, importance="l1", round_to=1)
    )
    assert small[0].out_features == 4
    x = torch.randn(64, 4)  # not the calibration data
    assert _max_diff(small, model, x) > 0.1
    report = reconstruct_weights(
        small, model, _loader((32, 4)), kept_indices=summary["kept_indices"], ridge=0.0
    )
    assert _max_diff(small, model, x) < 1e-4
    assert [row["name"] for row in report["layers"]] == ["0", "1"]
    first, last = report["layers"]
    assert first["error_before"] == pytest.approx(0.0, abs=1e-6)  # kept units are untouched originals
    assert last["error_before"] > 0.1 and last["error_after"] < 1e-5
    assert report["batches"] == 4 and report["skipped"] == []


def test_nothing_pruned_gives_back_the_same_weights() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2))
    small, summary = channel_prune(
        model, torch.randn(1, 3, 8, 8), ChannelPruneConfig(ratio=0.0, importance="l1", round_to=1)
    )
    report = reconstruct_weights(
        small, model, _loader((4, 3, 8, 8)), kept_indices=summary["kept_indices"], ridge=0
    )
    for a, b in zip(small.parameters(), model.parameters()):
        assert torch.allclose(a, b, atol=1e-4)
    assert all(row["error_after"] < 1e-5 for row in report["layers"])


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )  # fmt: skip


def test_cnn_outputs_move_towards_the_original() -> None:
    torch.manual_seed(2)
    model = _cnn()
    with torch.no_grad():  # BN statistics that are not the identity
        model(torch.randn(64, 3, 8, 8) * 2 + 1)
    model.eval()
    small, summary = channel_prune(
        model, torch.randn(1, 3, 8, 8), ChannelPruneConfig(ratio=0.5, importance="l1", round_to=1)
    )
    x = torch.randn(32, 3, 8, 8)
    before = _max_diff(small, model, x)
    report = reconstruct_weights(small, model, _loader((16, 3, 8, 8)), kept_indices=summary["kept_indices"])
    after = _max_diff(small, model, x)
    assert after < 0.6 * before
    assert [row["name"] for row in report["layers"]] == ["0", "3", "8"]
    for row in report["layers"][1:]:
        assert row["error_after"] < row["error_before"]
    assert small[3].weight.shape == (8, 8, 3, 3)  # shapes kept
    assert not small.training and not model.training


def test_conv1d_and_skipped_depthwise_layers() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv1d(2, 8, 5, padding=2), nn.ReLU(),
        nn.Conv1d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.Conv1d(8, 4, 3, dilation=2),
    )  # fmt: skip
    small, summary = channel_prune(
        model, torch.randn(1, 2, 32), ChannelPruneConfig(ratio=0.5, importance="l1", round_to=1)
    )
    x = torch.randn(16, 2, 32)
    before = _max_diff(small, model, x)
    report = reconstruct_weights(small, model, _loader((8, 2, 32)), kept_indices=summary["kept_indices"])
    assert _max_diff(small, model, x) < before
    assert report["skipped"] == [
        {"name": "2", "reason": "grouped/depthwise convolution: each filter sees its own channels only"}
    ]
    assert [row["name"] for row in report["layers"]] == ["0", "4"]


def test_bad_input_is_named() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    small, summary = channel_prune(
        model, torch.randn(2, 4), ChannelPruneConfig(ratio=0.5, importance="l1", round_to=1)
    )
    kept = summary["kept_indices"]
    with pytest.raises(DataError, match="yielded no batches"):
        reconstruct_weights(small, model, [], kept_indices=kept)
    wrong = {**kept, "0": {"in": None, "out": [0, 1, 2, 3, 4, 5]}}
    with pytest.raises(ConfigError, match="6 output channels survive in '0'.*has 4"):
        reconstruct_weights(small, model, _loader((8, 4)), kept_indices=wrong)
    other = nn.Sequential(nn.Linear(4, 8))
    with pytest.raises(ConfigError, match="layer '2' of the pruned model is not in the original"):
        reconstruct_weights(small, other, _loader((8, 4)), kept_indices=kept)
    with pytest.raises(ConfigError, match="num_batches"):
        reconstruct_weights(small, model, _loader((8, 4)), kept_indices=kept, num_batches=0)


@pytest.mark.parametrize(
    "key,params", [("prune/channel", {"ratio": 0.5}), ("prune/auto", {"reduction": 2.0})]
)
def test_prune_steps_reconstruct_before_recalibrating(tmp_path, key: str, params: dict) -> None:
    import json

    from netcompress.core.methods import METHODS, MethodData
    from netcompress.core.methods import _ensure_registered as import_step_modules

    import_step_modules()

    torch.manual_seed(5)
    model = _cnn().eval()
    data = [(x, torch.randint(0, 5, (16,))) for x, _ in _loader((16, 3, 8, 8), batches=3)]
    ctx = MethodData(
        train_loader=data, val_loader=data, example_inputs=data[0][0][:2], out_dir=tmp_path, num_classes=5, progress=False,
    )  # fmt: skip
    spec = METHODS.get(key)
    plain = spec.fn(model, spec.config.from_dict({**params, "recalibrate_bn_batches": 0}, where=key), ctx)
    config = spec.config.from_dict(
        {**params, "reconstruct_batches": 3, "recalibrate_bn_batches": 0}, where=key
    )
    result = spec.fn(model, config, ctx)
    summary = json.loads(json.dumps(result.summary))  # JSON-able, without the kept indices
    assert "kept_indices" not in summary and summary["bn_recalibration"]["batches"] == 0
    recon = summary["reconstruction"]
    assert recon["batches"] == 3 and [row["name"] for row in recon["layers"]] == ["0", "3", "8"]
    assert 0.0 <= recon["accuracy_before"] <= 1.0 and 0.0 <= recon["accuracy_after"] <= 1.0
    x = torch.randn(16, 3, 8, 8)
    assert _max_diff(result.model, model, x) < 0.8 * _max_diff(plain.model, model, x)
    with pytest.raises(ConfigError, match="reconstruct_batches"):
        spec.config.from_dict({**params, "reconstruct_batches": -1}, where=key)


def test_large_batches_are_subsampled_evenly(monkeypatch) -> None:
    from netcompress.pruning import reconstruction

    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    small, summary = channel_prune(
        model, torch.randn(2, 4), ChannelPruneConfig(ratio=0.5, importance="l1", round_to=1)
    )
    monkeypatch.setattr(reconstruction, "MAX_ROWS_PER_BATCH", 10)  # 10 of each 32-row batch: still exact
    reconstruct_weights(small, model, _loader((32, 4)), kept_indices=summary["kept_indices"], ridge=0.0)
    assert _max_diff(small, model, torch.randn(64, 4)) < 1e-4
    monkeypatch.setattr(reconstruction, "MAX_ROWS_PER_BATCH", 1)  # 4 rows in all: too few for 5 unknowns
    small, summary = channel_prune(
        model, torch.randn(2, 4), ChannelPruneConfig(ratio=0.5, importance="l1", round_to=1)
    )
    reconstruct_weights(small, model, _loader((32, 4)), kept_indices=summary["kept_indices"])
    assert _max_diff(small, model, torch.randn(64, 4)) > 1e-3
