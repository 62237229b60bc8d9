"""In-memory image datasets: a tensor of images with a per-sample transform, and synthetic batches."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import Dataset


class TensorImages(Dataset):
    """``(transform(images[i]), labels[i])`` over in-memory (N, C, H, W) float images in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None,
                 num_classes: int | None = None):
        self.images, self.labels, self.transform = images, labels, transform
        self.num_classes = num_classes
        self.classes = [str(i) for i in range(num_classes)] if num_classes else []
        self.labelled = bool(num_classes)
        self.missing: list[str] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = self.images[index]
        return (self.transform(img) if self.transform else img), int(self.labels[index])


class SyntheticBatches:
    """``steps`` batches of uniform random images, made once on ``device`` (no loader cost).

    Yields ``(images (B, 3, S, S) float32 in [0, 1], labels (B,) int64 in [0, num_classes))``; for throughput.
    """

    def __init__(self, steps: int, batch_size: int, input_size: int, device: torch.device, seed: int = 0,
                 num_classes: int = 1):
        gen = torch.Generator(device=device).manual_seed(seed)
        self.images = torch.rand(batch_size, 3, input_size, input_size, generator=gen, device=device)
        self.labels = torch.randint(0, num_classes, (batch_size,), generator=gen, device=device)
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.steps):
            yield self.images, self.labels
