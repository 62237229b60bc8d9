"""Training and evaluation data: the embedded digits, image folders, or synthetic batches.

``train_loader(cfg, dataset, generator, device)`` returns an iterable of ``(images, labels)`` batches with
``images`` (B, 3, S, S) float32 in [0, 1]; the shuffle order comes from ``generator`` alone, so an epoch's
batches are a function of its seed. The last partial batch is dropped, so every step has the same shape.
Under ``world_size`` processes each rank gets a disjoint ``batch_size`` slice of every global batch of
``batch_size × world_size`` (``data/sharding.py``).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .backend import dali_train_loader, resolve_backend
from .digits import KINDS as DIGITS_KINDS
from .digits import NUM_CLASSES as DIGITS_CLASSES
from .digits import digits_split
from .folder import ImageFiles, plural, split_root
from .sharding import ShardedBatchSampler
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


def describe(split: str, dataset: Dataset, source: str) -> str:
    """One line saying what a split holds and where it came from, e.g. ``train: 1,500 images, 10 classes
    (the embedded digits)``."""
    if getattr(dataset, "labelled", True):
        what = plural(getattr(dataset, "num_classes", 0) or 0, "class", "classes")
    else:
        what = "unlabelled"
    line = f"{split}: {plural(len(dataset), 'image', 'images')}, {what} ({source})"
    missing = getattr(dataset, "missing", [])
    if missing:
        line += f"; no images of {plural(len(missing), 'class', 'classes')} the training data has: " + ", ".join(
            missing[:5]) + (", ..." if len(missing) > 5 else "")
    return line


def _digits_source(kind: str) -> str:
    return "the embedded digits" + (", held-out re-split of the training images" if kind != "digits" else "")


def build_train_dataset(cfg, transform, world_size: int = 1) -> Dataset | None:
    """The training set of ``cfg`` with ``transform`` (None for synthetic data, which needs no dataset); a
    ``DataError`` when a rank's share of it is smaller than one batch. Prints what it found."""
    kind = cfg.data_kind
    if kind == "synthetic":
        print(f"train: synthetic, {cfg.synthetic_size:,} random images per epoch")
        return None
    if kind in DIGITS_KINDS:
        images, labels = digits_split("train", kind)
        dataset: Dataset = TensorImages(images, labels, transform, num_classes=DIGITS_CLASSES)
        source = _digits_source(kind)
    else:
        root = _folder_root(cfg, "train")
        dataset = ImageFiles(root, transform)
        source = str(root)
    print(describe("train", dataset, source))
    if len(dataset) < cfg.batch_size:
        raise DataError(f"the training set has {len(dataset)} images, fewer than batch_size {cfg.batch_size}")
    if len(dataset) < cfg.batch_size * world_size:
        raise DataError(f"the training set has {len(dataset)} images: split over {world_size} processes that is "
                        f"{len(dataset) // world_size} each, fewer than batch_size {cfg.batch_size}")
    return dataset


def build_val_dataset(cfg, transform=None, classes: list[str] | None = None, report: bool = True) -> Dataset | None:
    """The un-augmented validation set (digits val, or the ``val/`` folder, labelled by the training data's
    ``classes`` when given); None if there is none. Prints what it found unless ``report`` is off."""
    transform = transform or eval_transform(cfg.input_size)
    kind = cfg.data_kind
    if kind in DIGITS_KINDS:
        images, labels = digits_split("val", kind)
        dataset: Dataset = TensorImages(images, labels, transform, num_classes=DIGITS_CLASSES)
        source = _digits_source(kind)
    elif kind == "folder":
        root = _folder_root(cfg, "val")
        if root is None:
            if report:
                print(f"val: none (no val/ folder in {cfg.data_path})")
            return None
        dataset = ImageFiles(root, transform, classes)
        source = str(root)
    else:
        return None
    if report:
        print(describe("val", dataset, source))
    return dataset


def num_classes(dataset: Dataset | None) -> int | None:
    """The number of classes of a dataset built here (None for synthetic data)."""
    return getattr(dataset, "num_classes", None)


def steps_per_epoch(cfg, dataset: Dataset | None, world_size: int = 1) -> int:
    """Full global batches (``batch_size × world_size`` images) per epoch; the last partial one is dropped."""
    per_step = cfg.batch_size * world_size
    return len(dataset) // per_step if dataset is not None else max(1, cfg.synthetic_size // per_step)


def train_loader(cfg, dataset: Dataset | None, generator: torch.Generator, device: torch.device, *, rank: int = 0,
                 world_size: int = 1, order: torch.Generator | None = None, start_step: int = 0):
    """One epoch of this rank's shuffled, fixed-size training batches, from batch ``start_step`` on (mid-epoch
    resume: the same order, without its first ``start_step`` batches).

    ``order`` (default: ``generator``) draws the epoch's order and must be seeded alike on every rank;
    ``generator`` (per rank) seeds loader workers and synthetic images. ``cfg.data_backend`` picks the loader
    (``data/backend.py``): DALI batches come from the ``order`` seed, on the GPU with ``--dali_device gpu``."""
    backend = resolve_backend(cfg, device)
    if backend == "dali":
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=order or generator))
        return dali_train_loader(cfg, dataset, device, seed=seed, rank=rank, world_size=world_size, skip=start_step)
    if dataset is None or backend == "synthetic":
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return SyntheticBatches(steps_per_epoch(cfg, dataset, world_size) - start_step, cfg.batch_size,
                                cfg.input_size, device, seed, getattr(cfg, "num_classes", 1))
    return DataLoader(
        dataset,
        batch_sampler=ShardedBatchSampler(len(dataset), cfg.batch_size, order or generator, rank, world_size,
                                          start_step),
        generator=generator,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )


def visual_batch(cfg, n: int = 8) -> torch.Tensor:
    """``n`` un-augmented images (n, 3, S, S) for figures: val images when there are some."""
    if cfg.data_kind == "synthetic":
        gen = torch.Generator().manual_seed(cfg.seed)
        return torch.rand(n, 3, cfg.input_size, cfg.input_size, generator=gen)
    dataset = build_val_dataset(cfg, report=False)
    if dataset is None:
        dataset = ImageFiles(_folder_root(cfg, "train"), eval_transform(cfg.input_size))
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])
