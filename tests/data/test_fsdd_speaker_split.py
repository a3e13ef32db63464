"""FSDD ``split: speakers``: whole speakers held out for testing (E4's held-out-speaker split).

Every generated clip's samples encode its speaker, digit and index, so the tests can say exactly
which recordings landed in which split.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

import netcompress.data as ncd
from netcompress.core.errors import ConfigError, DataError
from netcompress.data.fsdd import FsddConfig
from netcompress.data.splits import held_out_groups

SPEAKERS = ("ann", "bob", "cy", "dee")
DIGITS = (0, 1, 2)
INDICES = (0, 1, 2, 3, 4, 5)


def _value(speaker: int, digit: int, index: int) -> int:
    return 1000 * (speaker + 1) + 100 * digit + index


def _recordings(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for s, speaker in enumerate(SPEAKERS):
        for digit in DIGITS:
            for index in INDICES:
                with wave.open(str(folder / f"{digit}_{speaker}_{index}.wav"), "wb") as out:
                    out.setnchannels(1)
                    out.setsampwidth(2)
                    out.setframerate(8000)
                    out.writeframes(np.full(8, _value(s, digit, index), dtype="<i2").tobytes())
    return folder


def _speakers_of(dataset) -> list[str]:
    """Speaker of every sample, decoded from its first sample value."""
    values = np.round(dataset.waves[:, 0].numpy().astype(np.int64))
    return [SPEAKERS[v // 1000 - 1] for v in values.tolist()]


def _load(root: Path, cache: Path, **kw):
    return ncd.load("fsdd", root=str(root), length=8, cache_dir=str(cache), **kw)


def test_no_test_speaker_in_train_or_val(tmp_path: Path) -> None:
    root = _recordings(tmp_path / "rec")
    bundle = _load(root, tmp_path / "c", split="speakers", test_speakers=["cy", "ann"], val_size=6)
    test, train, val = (_speakers_of(d) for d in (bundle.test, bundle.train, bundle.val))
    # The test set is every recording of the held-out speakers: 2 speakers x 3 digits x 6 indices.
    assert len(test) == 36 and sorted(set(test)) == ["ann", "cy"]
    assert test.count("ann") == 18 and test.count("cy") == 18
    assert set(train) == {"bob", "dee"} and set(val) <= {"bob", "dee"}
    assert (len(train), len(val)) == (30, 6)
    # Every recording appears exactly once over the three splits.
    every = np.concatenate([d.waves[:, 0].numpy() for d in (bundle.train, bundle.val, bundle.test)])
    assert sorted(every.tolist()) == sorted(
        _value(s, d, i) for s in range(4) for d in DIGITS for i in INDICES
    )
    assert bundle.info["test_speakers"] == ["ann", "cy"]
    assert bundle.info["train_speakers"] == ["bob", "dee"]
    assert bundle.info["split"] == "speakers"


def test_speaker_split_is_deterministic(tmp_path: Path) -> None:
    root = _recordings(tmp_path / "rec")
    kw = {"split": "speakers", "test_speakers": ["dee"], "val_size": 9}
    a, b = _load(root, tmp_path / "c", **kw), _load(root, tmp_path / "c2", **kw)
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(a, part).waves.numpy(), getattr(b, part).waves.numpy())
        assert np.array_equal(getattr(a, part).labels.numpy(), getattr(b, part).labels.numpy())
    # The validation split is class-balanced over the training speakers: 3 per digit.
    assert np.bincount(a.val.labels.numpy()).tolist() == [3, 3, 3]


def test_index_split_unchanged_and_speakers_in_both(tmp_path: Path) -> None:
    root = _recordings(tmp_path / "rec")
    bundle = _load(root, tmp_path / "c", val_fraction=0)
    assert (len(bundle.train), len(bundle.test)) == (12, 60)  # index 5 trains, 0-4 test
    assert bundle.info["test_speakers"] == bundle.info["train_speakers"] == list(SPEAKERS)
    assert sorted(v % 100 for v in bundle.train.waves[:, 0].tolist()) == [5] * 12
    narrow = _load(root, tmp_path / "c", val_fraction=0, test_max_index=1)
    assert (len(narrow.train), len(narrow.test)) == (48, 24)


def test_unknown_speaker_is_an_error_naming_it(tmp_path: Path) -> None:
    root = _recordings(tmp_path / "rec")
    with pytest.raises(
        DataError, match=r"test speaker\(s\) 'zed' not in the data; speakers found: ann, bob, cy, dee"
    ):
        _load(root, tmp_path / "c", split="speakers", test_speakers=["bob", "zed"])
    with pytest.raises(DataError, match="are every speaker in the data: nothing left to train on"):
        _load(root, tmp_path / "c", split="speakers", test_speakers=list(SPEAKERS))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="split: speakers needs test_speakers"):
        FsddConfig(split="speakers")
    with pytest.raises(ConfigError, match="test_speakers is read only with split: speakers"):
        FsddConfig(test_speakers=["ann"])
    with pytest.raises(ConfigError, match="test_max_index is read only with split: index"):
        FsddConfig(split="speakers", test_speakers=["ann"], test_max_index=2)
    with pytest.raises(ConfigError, match="names ann more than once"):
        FsddConfig(split="speakers", test_speakers=["ann", "ann"])
    with pytest.raises(ConfigError, match=r"split='speaker' is not one of \['index', 'speakers'\]"):
        FsddConfig(split="speaker")
    with pytest.raises(ConfigError, match="test_speakers="):
        FsddConfig.from_dict({"split": "speakers", "test_speakers": "ann"})


def test_held_out_groups_mask() -> None:
    mask = held_out_groups(np.array([2, 0, 1, 2, 0]), ["a", "b", "c"], ["c", "a"])
    assert mask.tolist() == [True, True, False, True, True]
    with pytest.raises(DataError, match="test room\\(s\\) 'x' not in the data; rooms found: a, b"):
        held_out_groups(np.array([0, 1]), ["a", "b"], ["x"], what="room")
