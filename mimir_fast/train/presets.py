"""Named recipes: each is a function that returns a full config; flags override its fields.

The CIFAR-10, Tiny-ImageNet and ImageNet recipes follow MIMIR's released scripts (docs/pretraining.md and
docs/finetuning.md list them) and need ``--data_path``; ``digits`` is the default of both commands, small models
on the embedded digits at 16 px that train in minutes on a CPU.
"""

from __future__ import annotations

from typing import Callable

from .config import FinetuneConfig, PretrainConfig


def digits() -> PretrainConfig:
    """CPU demo: mae_vit_micro on the embedded digits at 16 px (their native 8 × 8 upsampled twice), patch 4
    (16 patches, 4 kept), batch 64, 30 epochs; about 1.5 minutes on 2 CPU cores."""
    return PretrainConfig(preset="digits")


def _mimir(preset: str, model: str, input_size: int, patch_size: int, batch_size: int) -> PretrainConfig:
    return PretrainConfig(
        preset=preset,
        model=model,
        input_size=input_size,
        patch_size=patch_size,
        batch_size=batch_size,
        epochs=800,
        warmup_epochs=40,
        blr=1.5e-4,
        data="folder",
        num_workers=8,
        save_freq=20,
    )


def cifar10_vit_t() -> PretrainConfig:
    """MIMIR CIFAR-10, ViT-Ti, 32 px, patch 2 (256 patches, 64 kept), batch 128 per GPU."""
    return _mimir("cifar10_vit_t", "mae_vit_ti", 32, 2, 128)


def cifar10_vit_s() -> PretrainConfig:
    """MIMIR CIFAR-10, ViT-S, 32 px, patch 2, batch 128 per GPU."""
    return _mimir("cifar10_vit_s", "mae_vit_small", 32, 2, 128)


def cifar10_vit_b() -> PretrainConfig:
    """MIMIR CIFAR-10, ViT-B, 32 px, patch 2, batch 128 per GPU."""
    return _mimir("cifar10_vit_b", "mae_vit_base", 32, 2, 128)


def tinyimagenet() -> PretrainConfig:
    """Tiny-ImageNet, ViT-Ti, 64 px, patch 4 (MIMIR ships no script; patch 4 is from its early model file)."""
    return _mimir("tinyimagenet", "mae_vit_ti", 64, 4, 128)


def imagenet_vit_s() -> PretrainConfig:
    """MIMIR ImageNet-1K, ViT-S/16, 224 px, batch 512 per GPU."""
    return _mimir("imagenet_vit_s", "mae_vit_small", 224, 16, 512)


def imagenet_vit_b() -> PretrainConfig:
    """MIMIR ImageNet-1K, ViT-B/16, 224 px, batch 512 per GPU."""
    return _mimir("imagenet_vit_b", "mae_vit_base", 224, 16, 512)


PRESETS: dict[str, Callable[[], PretrainConfig]] = {
    fn.__name__: fn
    for fn in (digits, cifar10_vit_t, cifar10_vit_s, cifar10_vit_b, tinyimagenet, imagenet_vit_s, imagenet_vit_b)
}


def _cifar10_ft(preset: str, model: str) -> FinetuneConfig:
    return FinetuneConfig(
        preset=preset, model=model, input_size=32, patch_size=2, num_classes=10, batch_size=128, epochs=50,
        warmup_epochs=5, blr=0.05, steps=10, eps=8.0, alpha=2.0, head_init_std=2e-2, data="folder",
        num_workers=8, save_freq=10,
    )


def _imagenet_ft(preset: str, model: str) -> FinetuneConfig:
    return FinetuneConfig(
        preset=preset, model=model, input_size=224, patch_size=16, num_classes=1000, batch_size=256, epochs=100,
        warmup_epochs=10, blr=1e-3, steps=1, eps=4.0, alpha=5.0, head_init_std=2e-5, data="folder",
        num_workers=8, save_freq=10,
    )


FINETUNE_PRESETS: dict[str, Callable[[], FinetuneConfig]] = {
    "digits": lambda: FinetuneConfig(preset="digits"),
    "cifar10_vit_t": lambda: _cifar10_ft("cifar10_vit_t", "vit_ti"),
    "cifar10_vit_s": lambda: _cifar10_ft("cifar10_vit_s", "vit_small"),
    "cifar10_vit_b": lambda: _cifar10_ft("cifar10_vit_b", "vit_base"),
    "imagenet_vit_s": lambda: _imagenet_ft("imagenet_vit_s", "vit_small"),
    "imagenet_vit_b": lambda: _imagenet_ft("imagenet_vit_b", "vit_base"),
}
