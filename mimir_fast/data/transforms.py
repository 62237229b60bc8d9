"""Image transforms. Pixels stay in [0, 1]: no mean/std normalisation anywhere, as in MIMIR.

Pretraining follows MIMIR: RandomResizedCrop(scale 0.2–1, bicubic) plus flip for ImageNet-size inputs
(fine-tuning: scale 0.08–1), RandomCrop(padding 4) plus flip for 32 and 64 px inputs (an image of another
size is first resized to the input size). Geometric ops run on the PIL image when the input is one, as
torchvision's v1 transforms did in MIMIR, and on the tensor otherwise. Outputs are (3, S, S) float32 tensors,
clamped to [0, 1].
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

SMALL_INPUT_MAX = 64  # MIMIR's CIFAR-10 (32 px) and Tiny-ImageNet (64 px) recipes


class EnsureSize:
    """Resize to ``size × size`` only when the image is not already that size."""

    def __init__(self, size: int):
        self.size = size
        self.resize = v2.Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=True)

    def __call__(self, img):
        h, w = v2.functional.get_size(img)
        return img if (h, w) == (self.size, self.size) else self.resize(img)


class Clamp01:
    """Clamp to [0, 1]: bicubic resampling of float tensors overshoots the range slightly."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img.clamp(0, 1)


def _to_float() -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), Clamp01()]


def train_transform(input_size: int, min_crop_scale: float) -> v2.Compose:
    """Random crop plus flip: padded crop for small inputs, RandomResizedCrop(min_crop_scale–1) above."""
    if input_size <= SMALL_INPUT_MAX:
        ops = [EnsureSize(input_size), v2.RandomCrop(input_size, padding=4)]
    else:
        ops = [v2.RandomResizedCrop(input_size, scale=(min_crop_scale, 1.0), interpolation=InterpolationMode.BICUBIC)]
    return v2.Compose([*ops, v2.RandomHorizontalFlip(), *_to_float()])


def pretrain_transform(input_size: int) -> v2.Compose:
    """MIMIR's pretraining augmentation (RandomResizedCrop scale 0.2–1 for large inputs)."""
    return train_transform(input_size, 0.2)


def finetune_transform(input_size: int) -> v2.Compose:
    """MIMIR's fine-tuning augmentation (no RandAugment, mixup or erasing; timm's crop scale 0.08–1)."""
    return train_transform(input_size, 0.08)


def eval_transform(input_size: int) -> v2.Compose:
    """Deterministic: resize to 256/224 of the input and center-crop for large inputs; exact size otherwise."""
    if input_size <= SMALL_INPUT_MAX:
        ops = [EnsureSize(input_size)]
    else:
        resize = int(round(input_size * 256 / 224))
        ops = [v2.Resize(resize, interpolation=InterpolationMode.BICUBIC, antialias=True), v2.CenterCrop(input_size)]
    return v2.Compose([*ops, *_to_float()])
