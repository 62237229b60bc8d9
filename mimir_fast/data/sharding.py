"""Each rank's share of a training epoch, DistributedSampler-style but with a global batch order.

The epoch's shuffled order is the same on every rank (it comes from a rank-independent generator). It is
cut into global batches of ``batch_size × world_size`` images, the last partial one dropped, and rank r
takes the r-th slice of ``batch_size`` images of each. The union of the ranks' step-i batches is thus the
step-i batch of one process running ``batch_size × world_size``, and the ranks' shards are disjoint.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ShardedBatchSampler(Sampler[list[int]]):
    """Index batches of one rank over a dataset of ``n`` items; the order is drawn from ``generator`` at
    each ``iter`` (one ``randperm(n)``, as ``RandomSampler`` draws it). ``start`` skips the epoch's first
    ``start`` batches of that same order (mid-epoch resume); ``len`` counts the batches left."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.rank, self.world_size = rank, world_size
        self.total = n // (batch_size * world_size)
        if not 0 <= start <= self.total:
            raise ValueError(f"cannot skip {start} batches of an epoch of {self.total}")
        self.start = start

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator)
        step = self.batch_size * self.world_size
        for i in range(self.start, self.total):
            start = i * step + self.rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()
