"""The step benchmark's named configurations, the default configurations of each suite, and the model builder.

A configuration is a pretraining preset with overrides (batch, resolution, model) and, optionally, extra
arguments for the model factory (another decoder). The batch is the per-GPU batch that is timed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mimir_fast.methods import build_config
from mimir_fast.models_mae import MaskedAutoencoderViT, create_model


@dataclass(frozen=True)
class StepConfig:
    """One named benchmark configuration."""

    preset: str
    """Pretraining preset (``mimir_fast.train.presets.PRESETS``)."""
    overrides: dict
    """Config fields set on top of the preset (batch_size, input_size, model, ...)."""
    model_kwargs: dict = field(default_factory=dict)
    """Extra arguments of the model factory, e.g. another decoder width and depth."""
    note: str = ""
    """What the configuration stands for, copied into its records."""


CONFIGS: dict[str, StepConfig] = {
    "digits_tiny": StepConfig("digits", dict(batch_size=8), note="tests only: mae_vit_micro, 16 px, batch 8"),
    "digits_micro": StepConfig("digits", dict(batch_size=64, input_size=32),
                               note="mae_vit_micro (128 x 6), MIMIR decoder 128 x 2, 32 px, patch 4"),
    # MAE's decoder is 4x deeper and 4x wider than MIMIR's; on the CPU only its depth (8 blocks) is kept, at the
    # micro encoder's width, so that the step stays CPU-sized (512 x 8 would be ~80x the micro encoder's FLOPs).
    "digits_micro_mae_decoder": StepConfig(
        "digits", dict(batch_size=64, input_size=32),
        model_kwargs=dict(decoder_embed_dim=128, decoder_depth=8, decoder_num_heads=16),
        note="mae_vit_micro with a CPU-sized MAE-style decoder: 128 wide, MAE's 8 blocks, 16 heads",
    ),
    "cifar10_vit_t_p2": StepConfig("cifar10_vit_t", dict(batch_size=32)),
    "cifar10_vit_s_p2": StepConfig("cifar10_vit_s", dict(batch_size=128)),
    "imagenet_vit_b_b256": StepConfig("imagenet_vit_b", dict(batch_size=256),
                                      note="the issue's target: ViT-B/16, 224 px, MIMIR decoder 128 x 2"),
    "imagenet_vit_b_mae_decoder_b256": StepConfig("imagenet_vit_b", dict(batch_size=256, model="mae_vit_base_patch16"),
                                                  note="ViT-B/16, 224 px, MAE decoder 512 x 8"),
    "imagenet_vit_l_b128": StepConfig("imagenet_vit_b", dict(batch_size=128, model="mae_vit_large"),
                                      note="ViT-L/16, 224 px, MIMIR decoder; the target is to fit in 80 GB"),
}

STEP_CONFIGS = (["imagenet_vit_b_b256", "imagenet_vit_b_mae_decoder_b256", "imagenet_vit_l_b128"],
                ["digits_micro", "cifar10_vit_t_p2"])
"""The step grid's default (GPU, CPU): the issue's ImageNet configurations on a GPU."""

SUITE_CONFIGS = {
    # suite: (GPU default, CPU default)
    "masking": (["imagenet_vit_b_b256", "imagenet_vit_b_mae_decoder_b256"],
                ["digits_micro", "digits_micro_mae_decoder"]),
    "pgd": (["imagenet_vit_b_b256"], ["digits_micro"]),
    "baseline": (["imagenet_vit_b_b256"], ["digits_micro"]),
    "compile": (["imagenet_vit_b_b256"], ["digits_micro"]),
}
"""Each suite's default configurations: the issue's ViT-B/16 pair on a GPU, CPU-sized stand-ins otherwise."""


def default_configs(suite: str, device: torch.device) -> list[str]:
    gpu, cpu = STEP_CONFIGS if suite == "step" else SUITE_CONFIGS[suite]
    return gpu if device.type == "cuda" else cpu


def build(name: str, method: str, steps: int, mask_ratio: float | None, device: torch.device):
    """The run config and a fresh model (seed 0) of configuration ``name``; ``mask_ratio`` (when given) sets
    the training forward's and the attack's mask ratio alike."""
    spec = CONFIGS[name]
    masks = {} if mask_ratio is None else dict(mask_ratio=mask_ratio, attack_mask_ratio=mask_ratio)
    cfg = build_config(spec.preset, method=method, steps=steps, **spec.overrides, **masks)
    torch.manual_seed(0)
    model = create_model(cfg.model, img_size=cfg.input_size, patch_size=cfg.patch_size,
                         norm_pix_loss=cfg.norm_pix_loss, **spec.model_kwargs).to(device)
    return cfg, model


def decoder_shape(model: MaskedAutoencoderViT) -> str:
    """``"<width>x<depth>"`` of the model's decoder, e.g. ``128x2`` (MIMIR) or ``512x8`` (MAE)."""
    return f"{model.decoder_embed.out_features}x{len(model.decoder_blocks)}"
