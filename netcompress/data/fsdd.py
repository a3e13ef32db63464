"""Free Spoken Digit Dataset: 3,000 recordings of spoken digits, 8 kHz mono, as raw waveforms.

Files are ``{digit}_{speaker}_{index}.wav``, in a folder (``recordings/``) or in ``fsdd.tar.gz``
(``fsdd/recordings/...``), read with the stdlib ``wave`` module. The decoded int16 audio is cached
at its natural lengths, so changing ``length`` does not re-decode. The usual split (``split:
index``): index 0-4 of each speaker and digit is the test set (300), 5-49 the training set (2,700);
every speaker is in both. ``split: speakers`` holds whole speakers out instead (``test_speakers``),
so the test set measures digits spoken by voices never heard in training.
"""

from __future__ import annotations

import dataclasses
import io
import re
import wave
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError, DataError
from netcompress.data.archives import iter_tar_members
from netcompress.data.bundle import DataBundle, ValidationSplit, hold_out_validation, split_counts
from netcompress.data.cache import cached_decode
from netcompress.data.catalog import find_default, register_dataset
from netcompress.data.in_memory import WaveformDataset
from netcompress.data.splits import held_out_groups

SAMPLE_RATE_HZ = 8000
FILE_PATTERN = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)\.wav$")
DEFAULT_NAMES = ("fsdd.tar.gz", "fsdd", "free-spoken-digit-dataset")
SPLITS = ("index", "speakers")
DEFAULT_TEST_MAX_INDEX = 4


@dataclasses.dataclass
class FsddConfig(ValidationSplit):
    """Settings of the ``fsdd`` data set.

    ``length`` samples per clip (8000 = 1 s): shorter clips are zero-padded at the end, longer
    ones cropped around their centre (where the word is). ``split: index`` (the default):
    recordings with index <= ``test_max_index`` (default 4) form the test set. ``split: speakers``:
    every recording of the ``test_speakers`` forms the test set, and no recording of theirs is
    in training. The validation split (``val_fraction``, ``val_size``, ``val_seed``) is held out of
    the training recordings (so, with ``split: speakers``, it holds training speakers only).

    Example:
        >>> FsddConfig(split="speakers", test_speakers=["george"])
    """

    root: str | None = None
    length: int = 8000
    split: str = "index"
    test_max_index: int | None = None
    test_speakers: list[str] = dataclasses.field(default_factory=list)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("length", self.length, 1)
        check_choice("split", self.split, SPLITS)
        if self.test_max_index is not None:
            check_range("test_max_index", self.test_max_index, 0)
        if self.split == "index" and self.test_speakers:
            raise ConfigError("test_speakers is read only with split: speakers (split is 'index')")
        if self.split == "speakers":
            if self.test_max_index is not None:
                raise ConfigError("test_max_index is read only with split: index (split is 'speakers')")
            if not self.test_speakers:
                raise ConfigError("split: speakers needs test_speakers, e.g. test_speakers: [george]")
            repeated = sorted({n for n in self.test_speakers if self.test_speakers.count(n) > 1})
            if repeated:
                raise ConfigError(f"test_speakers names {', '.join(repeated)} more than once")


def read_wav(data: bytes, *, where: str) -> np.ndarray:
    """int16 samples of a mono 16-bit 8 kHz WAV; any other format is a DataError naming ``where``.

    Example:
        >>> read_wav(Path("0_george_0.wav").read_bytes(), where="0_george_0.wav").dtype
        dtype('int16')
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            fmt = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise DataError(f"cannot read WAV {where}: {type(exc).__name__}: {exc}") from None
    if fmt != (1, 2, SAMPLE_RATE_HZ):
        raise DataError(
            f"WAV {where} is {fmt[0]} channel(s), {8 * fmt[1]}-bit, {fmt[2]} Hz; "
            f"expected mono 16-bit {SAMPLE_RATE_HZ} Hz"
        )
    return np.frombuffer(frames, dtype="<i2").astype(np.int16)


def _iter_wavs(root: Path) -> list[tuple[str, bytes]]:
    if root.is_file():
        return [(name, data) for name, data in iter_tar_members(root) if name.lower().endswith(".wav")]
    items = []
    for path in sorted(root.rglob("*.wav")):
        try:
            items.append((str(path), path.read_bytes()))
        except OSError as exc:
            raise DataError(f"cannot read WAV {path}: {exc}") from None
    return items


def _decode(root: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    rows = []
    for name, data in _iter_wavs(root):
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        if base.startswith("."):
            continue
        match = FILE_PATTERN.match(base)
        if match is None:
            raise DataError(f"WAV name {name} does not follow {{digit}}_{{speaker}}_{{index}}.wav")
        digit, speaker, index = int(match[1]), match[2], int(match[3])
        rows.append(
            (speaker, digit, index, read_wav(data, where=f"{root}:{name}" if root.is_file() else name))
        )
    if not rows:
        raise DataError(f"no {{digit}}_{{speaker}}_{{index}}.wav recordings found in {root}")
    rows.sort(key=lambda r: (r[0], r[1], r[2]))  # archive order must not change the data set
    speakers = sorted({r[0] for r in rows})
    speaker_id = {s: i for i, s in enumerate(speakers)}
    lengths = np.array([len(r[3]) for r in rows], dtype=np.int64)
    arrays = {
        "audio": np.concatenate([r[3] for r in rows]),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "digit": np.array([r[1] for r in rows], dtype=np.int64),
        "index": np.array([r[2] for r in rows], dtype=np.int64),
        "speaker": np.array([speaker_id[r[0]] for r in rows], dtype=np.int64),
    }
    return arrays, {"speakers": speakers}


def fit_length(audio: np.ndarray, offsets: np.ndarray, *, length: int) -> np.ndarray:
    """``(N, length)`` int16 clips: zero-padded at the end, or cropped around the centre when longer.

    Example:
        >>> fit_length(np.arange(1, 6, dtype=np.int16), np.array([0, 2, 5]), length=2).tolist()
        [[1, 2], [3, 4]]
    """
    out = np.zeros((len(offsets) - 1, length), dtype=np.int16)
    for i in range(len(offsets) - 1):
        clip = audio[offsets[i] : offsets[i + 1]]
        if len(clip) > length:
            start = (len(clip) - length) // 2
            clip = clip[start : start + length]
        out[i, : len(clip)] = clip
    return out


def resolve_root(root: Path) -> Path:
    """The folder or archive holding the recordings, or a DataError naming ``root``.

    Example:
        >>> resolve_root(Path("../shared/data/fsdd.tar.gz"))
        PosixPath('../shared/data/fsdd.tar.gz')
    """
    if not root.exists():
        raise DataError(f"FSDD path does not exist: {root}")
    if root.is_file() and not root.name.lower().endswith((".tar.gz", ".tgz", ".tar")):
        raise DataError(f"FSDD path {root} is a file but not a .tar.gz/.tgz/.tar archive")
    return root


def test_mask(arrays: dict[str, np.ndarray], speakers: list[str], config: FsddConfig) -> np.ndarray:
    """Which recordings form the test set under ``config.split``; an unknown test speaker is a DataError.

    Example:
        >>> test_mask({"index": np.array([0, 7]), "speaker": np.array([0, 1])}, ["ann", "bob"],
        ...           FsddConfig(split="speakers", test_speakers=["bob"])).tolist()
        [False, True]
    """
    if config.split == "speakers":
        return held_out_groups(arrays["speaker"], speakers, config.test_speakers, what="speaker")
    top = DEFAULT_TEST_MAX_INDEX if config.test_max_index is None else config.test_max_index
    return arrays["index"] <= top


@register_dataset("fsdd", config=FsddConfig)
def load_fsdd(config: FsddConfig) -> DataBundle:
    """The FSDD bundle: float waveforms (1, length) in [-1, 1), labels 0-9 = the spoken digit.

    Example:
        >>> bundle = load_fsdd(FsddConfig())
        >>> len(bundle.train), len(bundle.val), len(bundle.test), bundle.input_shape
        (2430, 270, 300, (1, 8000))
    """
    root = resolve_root(
        Path(config.root).expanduser() if config.root else find_default(DEFAULT_NAMES, what="FSDD")
    )
    arrays, meta, info = cached_decode(
        kind="fsdd",
        source=root,
        names=["audio", "offsets", "digit", "index", "speaker"],
        decode=lambda: _decode(root),
        cache_dir=config.cache_dir,
    )
    clips = torch.from_numpy(fit_length(arrays["audio"], arrays["offsets"], length=config.length))
    labels = torch.from_numpy(arrays["digit"])
    speakers = list(meta["speakers"])
    is_test = torch.from_numpy(test_mask(arrays, speakers, config))
    train = WaveformDataset(clips[~is_test], labels[~is_test])
    test = WaveformDataset(clips[is_test], labels[is_test])
    train, val = hold_out_validation(train, config)
    lengths = np.diff(arrays["offsets"])
    return DataBundle(
        name="fsdd",
        train=train,
        test=test,
        val=val,
        num_classes=10,
        input_shape=(1, config.length),
        class_names=[str(d) for d in range(10)],
        info={
            **info,
            "source": str(root),
            "sample_rate_hz": SAMPLE_RATE_HZ,
            **split_counts(train, val, test),
            "speakers": speakers,
            "split": config.split,
            "test_speakers": sorted({speakers[i] for i in arrays["speaker"][is_test.numpy()]}),
            "train_speakers": sorted({speakers[i] for i in arrays["speaker"][~is_test.numpy()]}),
            "clip_samples_min": int(lengths.min()),
            "clip_samples_max": int(lengths.max()),
            "clips_cropped": int((lengths > config.length).sum()),
            "config": config.to_dict(),
        },
    )
