"""Decoding image files of any size, mode and orientation to one fixed ``(C, H, W)`` uint8 shape.

Each file is decoded straight to its final size (JPEGs through Pillow's draft mode, which decodes
at a reduced scale), so memory holds the fitted images only, never the originals. Files decode in
a few threads: Pillow releases the GIL while decoding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from netcompress.core.errors import DataError

RESIZE_MODES = ("shorter", "stretch", "none")


def fit_image(
    path: Path, *, size: tuple[int, int], resize: str = "shorter", grayscale: bool = False
) -> np.ndarray:
    """The image at ``path`` as a ``(C, H, W)`` uint8 array, ``(H, W) = size``, C = 1 or 3.

    ``resize``: "shorter" scales the image so it covers ``size`` (the shorter side fits) and crops
    the centre; "stretch" scales to ``size`` ignoring the aspect ratio; "none" only crops the centre
    (an image smaller than ``size`` is then an error). Alpha is dropped, palette and grayscale
    images become RGB (or everything becomes one channel with ``grayscale``), and EXIF rotation is
    applied. An unreadable file is a DataError naming it.

    Example:
        >>> fit_image(Path("cat.png"), size=(32, 32)).shape
        (3, 32, 32)
    """
    height, width = size
    mode = "L" if grayscale else "RGB"
    try:
        with Image.open(path) as img:
            if img.format == "JPEG" and resize != "none":
                scale = _cover_scale(img.size, size) if resize == "shorter" else 1.0
                want = (math.ceil(img.width * scale), math.ceil(img.height * scale))
                img.draft(mode, want if resize == "shorter" else (width, height))
            img = ImageOps.exif_transpose(img)
            if img.mode in ("P", "PA"):  # a palette's transparency converts cleanly only through RGBA
                img = img.convert("RGBA")
            if img.mode != mode:
                img = img.convert(mode)
            img = _resized(img, size, resize, path)
            pixels = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from None
    if pixels.shape[:2] != (height, width):  # pragma: no cover - guarded by _resized
        raise DataError(f"image {path} came out {pixels.shape[:2]}, expected {size}")
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _cover_scale(image_size: tuple[int, int], size: tuple[int, int]) -> float:
    width, height = image_size
    return max(size[0] / height, size[1] / width)


def _resized(img: Image.Image, size: tuple[int, int], resize: str, path: Path) -> Image.Image:
    height, width = size
    if resize == "stretch":
        return img.resize((width, height), Image.Resampling.BILINEAR)
    if resize == "shorter":
        scale = _cover_scale(img.size, size)
        new = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
        if new != img.size:
            img = img.resize(new, Image.Resampling.BILINEAR)
    elif img.width < width or img.height < height:
        raise DataError(
            f"image {path} is {img.width}x{img.height}, smaller than image_size {height}x{width} "
            "(H x W); use resize: shorter or stretch"
        )
    left, top = (img.width - width) // 2, (img.height - height) // 2
    return img.crop((left, top, left + width, top + height))


def decode_images(
    paths: Sequence[Path],
    *,
    size: tuple[int, int],
    resize: str = "shorter",
    grayscale: bool = False,
    workers: int | None = None,
) -> np.ndarray:
    """All ``paths`` fitted by :func:`fit_image` into one ``(N, C, H, W)`` uint8 array, in order.

    The array is allocated once and each thread writes its images into it, so peak memory is the
    result plus one image per thread.

    Example:
        >>> decode_images([Path("a.jpg"), Path("b.png")], size=(16, 16)).shape
        (2, 3, 16, 16)
    """
    out = np.empty((len(paths), 1 if grayscale else 3, *size), dtype=np.uint8)

    def _one(index: int) -> None:
        out[index] = fit_image(paths[index], size=size, resize=resize, grayscale=grayscale)

    workers = workers or min(4, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < 16:
        for i in range(len(paths)):
            _one(i)
        return out
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(_one, range(len(paths))):  # re-raises the first DataError
            pass
    return out
