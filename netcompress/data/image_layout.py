"""Finding the images of a user's class-folder tree: which files, which class, which split.

Two layouts (torchvision's ImageFolder convention: a folder's name is its class, classes sorted):

- ``root/<class>/**/*.{jpg,jpeg,png,bmp,webp}``: one pile, split into train/test by the loader;
- ``root/train/<class>/...`` with ``root/test/<class>/...`` (and optionally ``root/val/<class>/...``).

Every mistake a user can make here is a DataError naming the path: a missing or empty root, a
class folder without images, images lying outside class folders, a test class that has no
training images. Hidden files and files with other suffixes are skipped.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from netcompress.core.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLIT_FOLDERS = ("train", "val", "test")
ALL = "all"  # the part name of a tree without split folders


@dataclasses.dataclass(frozen=True)
class ImageLayout:
    """What :func:`find_layout` found: ``parts`` maps "all" (or "train"/"val"/"test") to sorted
    ``(path, label)`` pairs; labels index ``class_names``.

    Example:
        >>> layout = find_layout(Path("flowers"))
        >>> layout.class_names, sorted(layout.parts)
        (['daisy', 'rose'], ['all'])
    """

    root: Path
    class_names: list[str]
    parts: dict[str, list[tuple[Path, int]]]

    @property
    def has_splits(self) -> bool:
        return ALL not in self.parts

    def count(self) -> int:
        return sum(len(files) for files in self.parts.values())


def is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _stray_images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and is_image(p.name))


def class_images(folder: Path) -> list[Path]:
    """Every image below ``folder`` (sub-folders included), sorted; none is a DataError naming it.

    Example:
        >>> class_images(Path("flowers/rose"))[:1]
        [PosixPath('flowers/rose/001.jpg')]
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / name for name in sorted(filenames) if is_image(name))
    if not found:
        raise DataError(
            f"class folder {folder} holds no images (suffixes {', '.join(IMAGE_SUFFIXES)}); "
            "remove it or add images"
        )
    return found


def _read_classes(folder: Path) -> dict[str, list[Path]]:
    stray = _stray_images(folder)
    if stray:
        raise DataError(
            f"{folder} holds images outside class folders ({', '.join(stray[:3])}"
            f"{', ...' if len(stray) > 3 else ''}); put each image in <root>/<class>/"
        )
    classes = {sub.name: class_images(sub) for sub in _subfolders(folder)}
    if not classes:
        raise DataError(
            f"no class folders in {folder}; expected <root>/<class>/*.jpg or <root>/{{train,test}}/<class>/*.jpg"
        )
    return classes


def find_layout(root: Path) -> ImageLayout:
    """The classes and labelled image files of a class-folder tree at ``root`` (either layout).

    With a ``train/`` folder, every sub-folder of ``root`` must be ``train``, ``val`` or ``test``;
    classes are the sorted class folders of ``train/``, and ``val/`` and ``test/`` may hold a subset
    of them. Without split folders, classes are the sorted sub-folders of ``root``.
    """
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"image folder {root} is a file, not a folder of class folders")
    subfolders = {p.name: p for p in _subfolders(root)}
    if "train" not in subfolders:
        misplaced = sorted(set(subfolders) & {"val", "test"})
        if misplaced:
            raise DataError(f"{root} has {misplaced[0]}/ but no train/ folder next to it")
        classes = _read_classes(root)
        names = sorted(classes)
        files = [(path, label) for label, name in enumerate(names) for path in classes[name]]
        return ImageLayout(root=root, class_names=names, parts={ALL: files})
    unexpected = sorted(set(subfolders) - set(SPLIT_FOLDERS))
    if unexpected:
        raise DataError(
            f"{root} has train/ and also {root / unexpected[0]}; with split folders every sub-folder "
            "must be train, val or test"
        )
    if "test" not in subfolders:
        raise DataError(f"{root} has train/ but no test/ folder; add one, or put the class folders in {root}")
    by_split = {split: _read_classes(subfolders[split]) for split in SPLIT_FOLDERS if split in subfolders}
    names = sorted(by_split["train"])
    label_of = {name: i for i, name in enumerate(names)}
    parts: dict[str, list[tuple[Path, int]]] = {}
    for split, classes in by_split.items():
        extra = sorted(set(classes) - set(label_of))
        if extra:
            raise DataError(
                f"{subfolders[split] / extra[0]} is a class with no training images in {subfolders['train']}"
            )
        parts[split] = [(path, label_of[name]) for name in sorted(classes) for path in classes[name]]
    return ImageLayout(root=root, class_names=names, parts=parts)
