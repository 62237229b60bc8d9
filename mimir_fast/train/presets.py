"""Named recipes. Each is a function that returns a full config; flags override its fields.

Pretraining (``PRESETS``) follows ``mimir-spec.md`` §4 (from xiaoyunxxy/MIMIR's scripts): 800 epochs, 40 warmup,
blr 1.5e-4, AdamW (0.9, 0.95), wd 0.05, PGD-1 at ε = 8/255, α = 10/255, λ = 1e-5, norm-pix loss, save every
20 epochs. ``batch_size`` is MIMIR's per-GPU batch (the HSIC batch m): 128 for CIFAR-10 and 512 for ImageNet,
on 4 GPUs in the paper's runs, so a single GPU sees a quarter of their effective batch (and
lr = blr × batch / 256 scales with it). The CIFAR and ImageNet recipes need ``--data_path``.

Fine-tuning (``FINETUNE_PRESETS``) follows §5: label smoothing 0.1, layer decay 0.65, drop-path 0.1, AdamW
(0.9, 0.999), wd 0.05, min lr 1e-6. CIFAR-10: 50 epochs, 5 warmup, blr 0.05 at batch 128 (lr 0.025), PGD-10 at
ε = 8/255, α = 2/255, head std 2e-2. ImageNet: 100 epochs, 10 warmup, blr 1e-3 at batch 256 per GPU (MIMIR:
4 × 256), PGD-1 at ε = 4/255, α = 5/255, head std 2e-5.

``digits`` is the default of both: small models on the embedded digits at 16 px, minutes on a CPU; fine-tuning
uses PGD-2 at ε = 8/255 with step 2/255 for 10 epochs.
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
