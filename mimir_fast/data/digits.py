"""The embedded default dataset: scikit-learn's handwritten digits as 32 × 32 RGB images.

1,797 real 8 × 8 grey images (10 classes) ship inside scikit-learn, so a fresh machine trains with no
download. They are scaled to [0, 1] (raw values are 0..16), upsampled bilinearly to 32 × 32, repeated to
3 channels, and split by a fixed permutation into 1,500 train and 297 val images.

The ``digits-holdout`` data kind splits the 1,500 training images again, into 1,200 for training and 300 for
validation, so that a recipe can be chosen without looking at the real validation images.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

NUM_TRAIN = 1500
NUM_HOLDOUT_TRAIN = 1200  # digits-holdout: the first 1,200 training images train, the other 300 validate
KINDS = ("digits", "digits-holdout")
NUM_CLASSES = 10
SIZE = 32


@cache
def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # a ~40 ms read of a CSV that ships with scikit-learn

    raw = load_digits()
    x = torch.from_numpy(raw.images).float().div(16.0).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False).clamp(0, 1)
    x = x.expand(-1, 3, -1, -1).contiguous()  # (1797, 3, 32, 32)
    y = torch.from_numpy(raw.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm], y[perm]


def digits_split(split: str, kind: str = "digits") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) float32 in [0, 1] and labels (N,) int64 of ``split`` ('train' or 'val') of the
    ``digits`` data or of its ``digits-holdout`` re-split of the training images."""
    x, y = _all_digits()
    if kind == "digits-holdout":
        x, y = x[:NUM_TRAIN], y[:NUM_TRAIN]
        if split == "train":
            return x[:NUM_HOLDOUT_TRAIN], y[:NUM_HOLDOUT_TRAIN]
        if split == "val":
            return x[NUM_HOLDOUT_TRAIN:], y[NUM_HOLDOUT_TRAIN:]
    elif kind != "digits":
        raise ValueError(f"unknown digits kind {kind!r}; use one of {KINDS}")
    if split == "train":
        return x[:NUM_TRAIN], y[:NUM_TRAIN]
    if split == "val":
        return x[NUM_TRAIN:], y[NUM_TRAIN:]
    raise ValueError(f"unknown digits split {split!r}; use 'train' or 'val'")
