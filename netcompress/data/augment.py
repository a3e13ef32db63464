"""Image augmentation as batched tensor ops (no torchvision): random crop with padding, flips.

Augmenting a whole batch with one gather is far cheaper than 128 Python-level crops on a
2-core machine, so the in-memory datasets call these on the batch their ``__getitems__`` gets.
Randomness comes from ``generator`` or, when None, torch's global RNG, so
``torch.manual_seed`` / ``seed_everything`` (and DataLoader worker seeding) make it repeatable.
"""

from __future__ import annotations

import torch


def random_crop_flip(
    images: torch.Tensor,
    *,
    padding: int = 4,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Randomly shift each image by up to ``padding`` pixels (zero fill) and mirror half of them.

    Equivalent to torchvision's ``RandomCrop(size, padding=padding)`` followed by
    ``RandomHorizontalFlip()``, applied per image in one indexed gather. Works on any dtype
    (uint8 before normalisation keeps the zero padding black, as torchvision does) and returns a
    new tensor of the same shape; the input is not modified.

    Example:
        >>> batch = torch.zeros(128, 3, 32, 32, dtype=torch.uint8)
        >>> random_crop_flip(batch, padding=4).shape
        torch.Size([128, 3, 32, 32])
    """
    if images.dim() != 4:
        raise ValueError(f"random_crop_flip expects (N, C, H, W), got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0 and not flip:
        return images.clone()
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding)) if padding else images
    off_y = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    off_x = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = off_y[:, None] + torch.arange(h)[None, :]  # (N, H)
    cols = torch.arange(w)[None, :].expand(n, w)
    if flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    cols = off_x[:, None] + cols  # (N, W)
    # Gather rows then columns: two cheap index_select-like gathers instead of a 4-D fancy index.
    batch_idx = torch.arange(n)[:, None]
    out = padded.permute(0, 2, 1, 3)[batch_idx, rows]  # (N, H, C, W+2p)
    out = out.permute(0, 3, 2, 1)[batch_idx, cols]  # (N, W, C, H)
    return out.permute(0, 2, 3, 1).contiguous()


def normalize(images: torch.Tensor, *, mean: torch.Tensor, std: torch.Tensor, scale: float) -> torch.Tensor:
    """``(images / scale - mean) / std`` per channel, as float32; ``mean``/``std`` have shape (C,).

    Example:
        >>> normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8),
        ...           mean=torch.tensor([0.5] * 3), std=torch.tensor([0.5] * 3), scale=255.0)[0, 0, 0, 0]
        tensor(1.)
    """
    shape = (1, -1) + (1,) * (images.dim() - 2)
    inv = 1.0 / (std * scale)
    return images.to(torch.float32).mul_(inv.view(shape)).sub_((mean / std).view(shape))
