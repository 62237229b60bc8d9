"""Training and evaluation data: the embedded digits, image folders, or synthetic batches.

``train_loader(cfg, dataset, generator, device)`` returns an iterable of ``(images, labels)`` batches with
``images`` (B, 3, S, S) float32 in [0, 1]; the shuffle order comes from ``generator`` alone, so an epoch's
batches are a function of its seed. The last partial batch is dropped, so every step has the same shape.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .digits import NUM_CLASSES as DIGITS_CLASSES
from .digits import digits_split
from .folder import ImageFiles, split_root
from .tensors import SyntheticBatches, TensorImages
from .transforms import eval_transform

__all__ = [
    "build_train_dataset", "build_val_dataset", "num_classes", "steps_per_epoch", "train_loader", "visual_batch",
    "digits_split",
]


def _folder_root(cfg, split: str):
    if not cfg.data_path:
        raise DataError(f"preset {cfg.preset!r} reads image folders: give --data_path")
    return split_root(cfg.data_path, split)


def build_train_dataset(cfg, transform) -> Dataset | None:
    """The training set of ``cfg`` with ``transform`` (None for synthetic data, which needs no dataset)."""
    kind = cfg.data_kind
    if kind == "synthetic":
        return None
    if kind == "digits":
        images, labels = digits_split("train")
        dataset: Dataset = TensorImages(images, labels, transform, num_classes=DIGITS_CLASSES)
    else:
        dataset = ImageFiles(_folder_root(cfg, "train"), transform)
    if len(dataset) < cfg.batch_size:
        raise DataError(f"the training set has {len(dataset)} images, fewer than batch_size {cfg.batch_size}")
    return dataset


def build_val_dataset(cfg, transform=None) -> Dataset | None:
    """The un-augmented validation set (digits val, or the ``val/`` folder); None if there is none."""
    transform = transform or eval_transform(cfg.input_size)
    kind = cfg.data_kind
    if kind == "digits":
        images, labels = digits_split("val")
        return TensorImages(images, labels, transform, num_classes=DIGITS_CLASSES)
    if kind == "folder":
        root = _folder_root(cfg, "val")
        return ImageFiles(root, transform) if root is not None else None
    return None


def num_classes(dataset: Dataset | None) -> int | None:
    """The number of classes of a dataset built here (None for synthetic data)."""
    return getattr(dataset, "num_classes", None)


def steps_per_epoch(cfg, dataset: Dataset | None) -> int:
    """Full batches per epoch (the last partial batch is dropped)."""
    return len(dataset) // cfg.batch_size if dataset is not None else max(1, cfg.synthetic_size // cfg.batch_size)


def train_loader(cfg, dataset: Dataset | None, generator: torch.Generator, device: torch.device):
    """One epoch of shuffled, fixed-size training batches."""
    if dataset is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return SyntheticBatches(steps_per_epoch(cfg, None), cfg.batch_size, cfg.input_size, device, seed,
                                getattr(cfg, "num_classes", 1))
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        generator=generator,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )


def visual_batch(cfg, n: int = 8) -> torch.Tensor:
    """``n`` un-augmented images (n, 3, S, S) for figures: val images when there are some."""
    if cfg.data_kind == "synthetic":
        gen = torch.Generator().manual_seed(cfg.seed)
        return torch.rand(n, 3, cfg.input_size, cfg.input_size, generator=gen)
    dataset = build_val_dataset(cfg)
    if dataset is None:
        dataset = ImageFiles(_folder_root(cfg, "train"), eval_transform(cfg.input_size))
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])
