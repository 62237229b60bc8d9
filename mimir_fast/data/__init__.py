"""Pretraining data: the embedded digits, image folders, or synthetic batches.

``train_loader(cfg, dataset, generator, device)`` returns an iterable of ``(images, labels)`` batches with
``images`` (B, 3, S, S) float32 in [0, 1]; the shuffle order comes from ``generator`` alone, so an epoch's
batches are a function of its seed. The last partial batch is dropped, so every step has the same shape.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .digits import digits_split
from .folder import ImageFiles, split_root
from .tensors import SyntheticBatches, TensorImages
from .transforms import eval_transform, pretrain_transform

__all__ = ["build_train_dataset", "steps_per_epoch", "train_loader", "visual_batch", "digits_split"]


def _folder_root(cfg, split: str):
    if not cfg.data_path:
        raise DataError(f"preset {cfg.preset!r} reads image folders: give --data_path")
    return split_root(cfg.data_path, split)


def build_train_dataset(cfg) -> Dataset | None:
    """The augmented training set of ``cfg`` (None for synthetic data, which needs no dataset)."""
    kind = cfg.data_kind
    if kind == "synthetic":
        return None
    if kind == "digits":
        images, labels = digits_split("train")
        dataset: Dataset = TensorImages(images, labels, pretrain_transform(cfg.input_size))
    else:
        dataset = ImageFiles(_folder_root(cfg, "train"), pretrain_transform(cfg.input_size))
    if len(dataset) < cfg.batch_size:
        raise DataError(f"the training set has {len(dataset)} images, fewer than batch_size {cfg.batch_size}")
    return dataset


def steps_per_epoch(cfg, dataset: Dataset | None) -> int:
    """Full batches per epoch (the last partial batch is dropped)."""
    return len(dataset) // cfg.batch_size if dataset is not None else max(1, cfg.synthetic_size // cfg.batch_size)


def train_loader(cfg, dataset: Dataset | None, generator: torch.Generator, device: torch.device):
    """One epoch of shuffled, fixed-size training batches."""
    if dataset is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return SyntheticBatches(steps_per_epoch(cfg, None), cfg.batch_size, cfg.input_size, device, seed)
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
    """``n`` un-augmented images (n, 3, S, S) for the reconstruction figure: val images when there are some."""
    kind = cfg.data_kind
    if kind == "synthetic":
        gen = torch.Generator().manual_seed(cfg.seed)
        return torch.rand(n, 3, cfg.input_size, cfg.input_size, generator=gen)
    if kind == "digits":
        images = digits_split("val")[0][:n]
        dataset: Dataset = TensorImages(images, torch.zeros(len(images)), eval_transform(cfg.input_size))
    else:
        root = _folder_root(cfg, "val") or _folder_root(cfg, "train")
        dataset = ImageFiles(root, eval_transform(cfg.input_size))
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])
