"""Named pretraining recipes. Each is a function that returns a full ``PretrainConfig``.

The MIMIR recipes follow ``mimir-spec.md`` (from xiaoyunxxy/MIMIR's scripts): 800 epochs, 40 warmup,
blr 1.5e-4, AdamW (0.9, 0.95), wd 0.05, PGD-1 at ε = 8/255, α = 10/255, λ = 1e-5, norm-pix loss, save
every 20 epochs. ``batch_size`` is MIMIR's per-GPU batch (the HSIC batch m): 128 for CIFAR-10 and 512 for
ImageNet, on 4 GPUs in the paper's runs, so a single GPU sees a quarter of their effective batch
(and lr = blr × batch / 256 scales with it). The CIFAR and ImageNet recipes need ``--data_path``.

``digits`` is the default: a small encoder on the embedded scikit-learn digits, a few minutes on a CPU.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..errors import ConfigError
from .config import PretrainConfig


def digits() -> PretrainConfig:
    """CPU demo: mae_vit_micro, 32 px, patch 4, batch 64, on the embedded digits."""
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


def build_config(preset: str = "digits", **overrides) -> PretrainConfig:
    """The preset's config with ``overrides`` applied (and validated again)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    try:
        return replace(PRESETS[preset](), **overrides)
    except TypeError as e:  # an unknown field name
        raise ConfigError(str(e)) from None
