"""Image files on disk: an ImageFolder root (one sub-folder per class) or a flat folder of unlabelled images.

``--data_path`` may point at a root holding ``train/`` and ``val/`` (each an ImageFolder), at one ImageFolder, or
at a flat folder. Classes are numbered by the training split's sorted folder names; another split is mapped onto
that numbering by name. A missing or empty path, an empty class folder, a folder that mixes both layouts, a class
the training split lacks, or an image that fails to decode is a ``DataError`` that names the path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _files_under(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return found


def scan_images(root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """``(path, class name)`` pairs and the sorted class names of an ImageFolder ``root``; for a flat folder of
    images, the pairs have the class name "" and the class list is empty."""
    folders = sorted(d.name for d in root.iterdir() if d.is_dir())
    flat = sorted(f for f in os.listdir(root) if _is_image(f) and (root / f).is_file())
    if folders and flat:
        raise DataError(f"{root} holds {len(flat)} images and {len(folders)} folder(s) ({', '.join(folders[:3])}"
                        f"{', ...' if len(folders) > 3 else ''}): use one layout, class folders or a flat folder of "
                        "images")
    if flat or not folders:
        return [(str(root / f), "") for f in flat], []
    samples = []
    for name in folders:
        files = _files_under(root / name)
        if not files:
            raise DataError(f"class folder {root / name} holds no images (looked for {', '.join(IMG_EXTENSIONS)})")
        samples.extend((p, name) for p in files)
    return samples, folders


def split_root(data_path: str, split: str) -> Path | None:
    """The folder holding ``split``: ``data_path/split`` if it exists; for 'train', else ``data_path``."""
    root = Path(data_path).expanduser()
    if not root.exists():
        raise DataError(f"data path {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a directory")
    if (root / split).is_dir():
        return root / split
    return root if split == "train" else None


def load_rgb(path: str) -> Image.Image:
    """Decode ``path`` to an RGB PIL image, or raise a ``DataError`` naming the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image {path}: {e}") from None


class ImageFiles(Dataset):
    """Images under ``root`` as ``(transform(image), label)``.

    Args:
        root: a folder of class sub-folders, or a flat folder of images (unlabelled: every label is 0).
        transform: maps a PIL image to a (3, S, S) tensor.
        classes: the class names that define the labels (the training split's); None: ``root``'s own sorted
            class folders. A class folder not in ``classes`` is a ``DataError``; classes without a folder here are
            listed in ``missing``.
    """

    def __init__(self, root: Path, transform: Callable, classes: list[str] | None = None):
        self.root = Path(root)
        named, found = scan_images(self.root)
        if not named:
            raise DataError(f"no images found under {root} (looked for {', '.join(IMG_EXTENSIONS)})")
        self.labelled = bool(found)
        """Whether the images come in class folders."""
        self.classes = list(classes) if classes is not None and self.labelled else found or [self.root.name]
        unknown = [c for c in found if c not in self.classes]
        if unknown:
            raise DataError(f"{root} has class folder(s) {', '.join(unknown[:3])} that the training data does not "
                            f"have (its {plural(len(self.classes), 'class', 'classes')}: "
                            f"{', '.join(self.classes[:5])}{', ...' if len(self.classes) > 5 else ''})")
        self.missing = [c for c in self.classes if c not in found] if self.labelled else []
        """Classes of the numbering with no folder under ``root``."""
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(p, index[c] if self.labelled else 0) for p, c in named]
        self.num_classes = len(self.classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label


def plural(n: int, one: str, many: str) -> str:
    """``"1 class"``, ``"2 classes"``."""
    return f"{n:,} {one if n == 1 else many}"
