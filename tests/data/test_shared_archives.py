"""The real CIFAR-10 and FSDD archives from ../shared/data (skipped when absent)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

import netcompress.data as ncd

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_cifar_archive_counts_per_class(cifar_bundle) -> None:
    bundle = cifar_bundle
    # 50,000 training images, of which 10 % (500 per class) are held out as the validation split.
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (45_000, 5_000, 10_000)
    assert bundle.class_names == CIFAR_CLASSES and bundle.input_shape == (3, 32, 32)
    assert np.bincount(bundle.train.labels.numpy()).tolist() == [4500] * 10
    assert np.bincount(bundle.val.labels.numpy()).tolist() == [500] * 10
    assert np.bincount(bundle.test.labels.numpy()).tolist() == [1000] * 10
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.images.shape == (45_000, 3, 32, 32)
    # Channel statistics of the JPEG release are close to the well-known CIFAR-10 values.
    assert np.abs(np.array(bundle.info["mean"]) - [0.4914, 0.4822, 0.4465]).max() < 0.01
    assert np.abs(np.array(bundle.info["std"]) - [0.2470, 0.2435, 0.2616]).max() < 0.01


def test_cifar_cached_reload_is_fast_and_subset_balanced(
    cifar_bundle, cifar_archive: Path, data_cache_dir: str
) -> None:
    start = time.perf_counter()
    sub = ncd.load("cifar10", root=str(cifar_archive), cache_dir=data_cache_dir, train_subset=10_000)
    seconds = time.perf_counter() - start
    assert sub.info["cache_hit"] is True and seconds < 5.0
    assert sub.info["train_per_class"] == [900] * 10 and len(sub.val) == 1000 and len(sub.test) == 10_000
    assert np.array_equal(sub.test.images.numpy(), cifar_bundle.test.images.numpy())
    again = ncd.load("cifar10", root=str(cifar_archive), cache_dir=data_cache_dir, train_subset=10_000)
    assert torch.equal(again.train.images[:100], sub.train.images[:100])


def test_cifar_loader_yields_normalised_augmented_batches(cifar_bundle) -> None:
    train, _ = cifar_bundle.loaders(batch_size=128, seed=0)
    x, y = next(iter(train))
    assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (128,)
    assert abs(x.mean().item()) < 0.3 and x.min().item() >= -2.1 and x.max().item() <= 2.2


def test_fsdd_archive_split_and_labels(fsdd_archive: Path, data_cache_dir: str) -> None:
    bundle = ncd.load("fsdd", root=str(fsdd_archive), cache_dir=data_cache_dir)
    # 2,700 training recordings, of which 10 % (27 per digit) are held out as the validation split.
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (2430, 270, 300)
    assert bundle.input_shape == (1, 8000) and bundle.num_classes == 10
    assert np.bincount(bundle.train.labels.numpy()).tolist() == [243] * 10
    assert np.bincount(bundle.val.labels.numpy()).tolist() == [27] * 10
    assert np.bincount(bundle.test.labels.numpy()).tolist() == [30] * 10
    assert bundle.info["speakers"] == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    x, _ = bundle.train.batch(range(len(bundle.train)))
    assert x.shape == (2430, 1, 8000) and x.abs().max().item() <= 1.0 and x.abs().max().item() > 0.1
    # Recordings shorter than 1 s end in zero padding; longer ones (20 of them) are cropped.
    assert bundle.info["clips_cropped"] == 20 and (x[:, 0, -1] == 0).float().mean().item() > 0.8
    short = ncd.load("fsdd", root=str(fsdd_archive), cache_dir=data_cache_dir, length=4000)
    assert short.info["cache_hit"] is True and short.input_shape == (1, 4000)
