"""FSDD reader on tiny generated WAV folders: split, labels, padding/cropping and errors.

These tests check how files are read, so they load with the validation split off
(``val_fraction=0``): the training split is every training recording.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

import netcompress.data as ncd
from netcompress.core.errors import DataError


def _wav(path: Path, samples: np.ndarray, *, channels: int = 1, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())


def _recordings(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for digit in (3, 7):
        for speaker in ("ann", "bob"):
            for index in (0, 4, 5, 9):
                # Value encodes the file so the test can check which clip landed where.
                value = digit * 1000 + index * 10 + (speaker == "bob")
                length = 10 if index != 9 else 30
                _wav(folder / f"{digit}_{speaker}_{index}.wav", np.full(length, value, dtype=np.int16))
    return folder


def test_split_labels_padding_and_scale(tmp_path: Path) -> None:
    _recordings(tmp_path / "fsdd" / "recordings")
    bundle = ncd.load(
        "fsdd", val_fraction=0, root=str(tmp_path / "fsdd"), length=20, cache_dir=str(tmp_path / "c")
    )
    assert (len(bundle.train), len(bundle.test)) == (8, 8) and bundle.input_shape == (1, 20)
    assert bundle.info["speakers"] == ["ann", "bob"]
    assert sorted(bundle.train.labels.tolist()) == [3] * 4 + [7] * 4
    x, y = bundle.test[0]  # ann, digit 3, index 0: 10 samples of 3000, then 10 zeros
    assert x.shape == (1, 20) and y == 3
    assert np.allclose(x[0, :10].numpy(), 3000 / 32768) and np.all(x[0, 10:].numpy() == 0)
    # Index 9 clips are 30 samples long: cropped to 20, every sample kept is the clip's value.
    waves = bundle.train.waves.numpy()
    assert np.all(waves[bundle.train.labels.numpy() == 7].max(axis=1) >= 7050)
    assert (waves != 0).sum(axis=1).tolist().count(20) == 4


def test_tar_matches_folder_and_cache_ignores_length(tmp_path: Path) -> None:
    import tarfile

    folder = _recordings(tmp_path / "fsdd" / "recordings")
    archive = tmp_path / "fsdd.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder.parent, arcname="fsdd")
    a = ncd.load("fsdd", val_fraction=0, root=str(folder), cache_dir=str(tmp_path / "c"))
    b = ncd.load("fsdd", val_fraction=0, root=str(archive), cache_dir=str(tmp_path / "c"))
    assert np.array_equal(a.train.waves.numpy(), b.train.waves.numpy()) and a.input_shape == (1, 8000)
    c = ncd.load("fsdd", val_fraction=0, root=str(archive), cache_dir=str(tmp_path / "c"), length=5)
    assert c.info["cache_hit"] is True and c.train.waves.shape == (8, 5)


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"FSDD path does not exist: {tmp_path / 'x'}"):
        ncd.load("fsdd", val_fraction=0, root=str(tmp_path / "x"))
    bad = _recordings(tmp_path / "bad")
    (bad / "3_ann_0.wav").write_bytes(b"RIFF....not a wav")
    with pytest.raises(DataError, match=f"cannot read WAV {bad / '3_ann_0.wav'}"):
        ncd.load("fsdd", val_fraction=0, root=str(bad), cache_dir=str(tmp_path / "c"))
    stereo = _recordings(tmp_path / "stereo")
    _wav(stereo / "3_ann_0.wav", np.zeros(20, dtype=np.int16), channels=2)
    with pytest.raises(DataError, match="3_ann_0.wav is 2 channel.*expected mono 16-bit 8000 Hz"):
        ncd.load("fsdd", val_fraction=0, root=str(stereo), cache_dir=str(tmp_path / "c"))
    named = _recordings(tmp_path / "named")
    _wav(named / "hello.wav", np.zeros(5, dtype=np.int16))
    with pytest.raises(DataError, match="hello.wav does not follow"):
        ncd.load("fsdd", val_fraction=0, root=str(named), cache_dir=str(tmp_path / "c"))
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match=f"no .* recordings found in {tmp_path / 'none'}"):
        ncd.load("fsdd", val_fraction=0, root=str(tmp_path / "none"), cache_dir=str(tmp_path / "c"))


def test_fit_length_pads_end_and_crops_centre() -> None:
    from netcompress.data.fsdd import fit_length

    audio = np.arange(1, 11, dtype=np.int16)  # clips [1, 2] and [3..10]
    out = fit_length(audio, np.array([0, 2, 10]), length=4)
    assert out.tolist() == [[1, 2, 0, 0], [5, 6, 7, 8]]
