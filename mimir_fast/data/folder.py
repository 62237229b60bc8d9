"""Image files on disk: an ImageFolder root or a flat folder of images.

``--data_path`` may point at a root holding ``train/`` and ``val/`` (each an ImageFolder), at one
ImageFolder (class sub-folders), or at a flat folder of images (all labelled 0). A missing or empty path,
or an image that fails to decode, is a ``DataError`` that names the path.
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


def scan_images(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """``(path, label)`` pairs and class names: class sub-folders in sorted order, or the flat images of
    ``root`` as one class."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    samples = [(p, label) for label, c in enumerate(classes) for p in _files_under(root / c)]
    if not samples:
        classes = [root.name]
        samples = [(str(root / f), 0) for f in sorted(os.listdir(root)) if _is_image(f) and (root / f).is_file()]
    return samples, classes


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
        root: a folder of class sub-folders, or a flat folder of images.
        transform: maps a PIL image to a (3, S, S) tensor.
    """

    def __init__(self, root: Path, transform: Callable):
        self.root = root
        self.samples, self.classes = scan_images(root)
        self.num_classes = len(self.classes)
        if not self.samples:
            raise DataError(f"no images found under {root} (looked for {', '.join(IMG_EXTENSIONS)})")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label
