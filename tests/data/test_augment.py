"""Batched crop/flip against a per-image reference, and per-channel normalisation."""

from __future__ import annotations

import torch

from netcompress.data.augment import normalize, random_crop_flip


def _reference(images: torch.Tensor, *, padding: int, seed: int) -> torch.Tensor:
    # Same draws in the same order as random_crop_flip, applied one image at a time with slicing.
    gen = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    off_y = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    off_x = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    mirror = torch.rand(n, generator=gen) < 0.5
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    out = []
    for i in range(n):
        crop = padded[i, :, off_y[i] : off_y[i] + h, off_x[i] : off_x[i] + w]
        out.append(crop.flip(-1) if mirror[i] else crop)
    return torch.stack(out)


def test_crop_flip_matches_per_image_reference() -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    got = random_crop_flip(images, padding=4, generator=torch.Generator().manual_seed(7))
    want = _reference(images, padding=4, seed=7)
    assert got.shape == images.shape and got.dtype == torch.uint8
    assert torch.equal(got, want)
    # Some images were shifted or mirrored, some pixels came from the zero padding.
    assert not torch.equal(got, images) and (got == 0).sum() > (images == 0).sum()


def test_crop_flip_seeded_by_global_rng_and_leaves_input() -> None:
    images = torch.rand(16, 1, 8, 8)
    before = images.clone()
    torch.manual_seed(1)
    a = random_crop_flip(images, padding=2)
    torch.manual_seed(1)
    b = random_crop_flip(images, padding=2)
    torch.manual_seed(2)
    c = random_crop_flip(images, padding=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(images, before)


def test_no_padding_no_flip_is_identity() -> None:
    images = torch.rand(4, 3, 5, 7)
    assert torch.equal(random_crop_flip(images, padding=0, flip=False), images)


def test_flip_only_mirrors_exactly() -> None:
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)
    out = random_crop_flip(images, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(out[i], images[i]) or torch.equal(out[i], images[i].flip(-1))


def test_normalize_per_channel_values() -> None:
    images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    out = normalize(images, mean=torch.tensor([0.5, 0.25]), std=torch.tensor([0.5, 0.25]), scale=255.0)
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, 0], torch.full((2, 2), -1.0)) and torch.allclose(
        out[0, 1], torch.full((2, 2), 3.0)
    )
