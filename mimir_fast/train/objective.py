"""One pretraining step's loss: MIMIR (mimir-spec.md §2–§3) or plain MAE.

MIMIR: ``x_adv = PGD(x)`` on the MAE self-reconstruction loss (fresh mask, random start), then the
clean ``x`` is reconstructed from ``x_adv`` under an independent mask, plus
``λ · HSIC_nCCA(latent, x_adv)`` over the per-replica batch. Random draws happen in the reference's
order: the attack's random start, one mask per attack step, then the training mask.

Returns device tensors only; nothing here synchronises with the host.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attacks import pgd_mae
from ..ops import hsic_normalized_cca
from .compile import attack_target

LOSS_KEYS = ("loss", "mae_loss", "hsic")


def pretrain_losses(model: nn.Module, imgs: torch.Tensor, cfg) -> dict[str, torch.Tensor]:
    """The step's losses for clean images ``imgs`` (N, C, H, W) in [0, 1].

    Returns ``loss`` (the scalar to backpropagate), and detached ``mae_loss`` and ``hsic`` (0 when the
    penalty is off). With DDP, pass the wrapped model: the attack runs on the module inside (``attack_target``),
    as in MIMIR.
    """
    if cfg.method == "mae":
        loss = model(imgs, cfg.mask_ratio)[0]
        return {"loss": loss, "mae_loss": loss.detach(), "hsic": torch.zeros((), device=imgs.device)}
    if cfg.method == "maep":  # MAEP purifier: also returns ``pur_loss`` (mimir_fast.purify.maep)
        from ..purify.maep import maep_lora_losses, maep_losses

        # stage lora returns only ``loss`` and ``pur_loss`` (MAEP_LORA_LOSS_KEYS)
        return (maep_lora_losses if cfg.maep_stage == "lora" else maep_losses)(model, imgs, cfg)
    if cfg.method == "nim":  # NIM: noise on every pixel, no masking (mimir_fast.purify.nim)
        from ..purify.nim import nim_losses

        return nim_losses(model, imgs, cfg)

    x_adv = pgd_mae(
        attack_target(model),
        imgs,
        eps=cfg.eps / 255,
        alpha=cfg.alpha / 255,
        steps=cfg.steps,
        mask_ratio=cfg.attack_mask_ratio,
    )
    mae_loss, _, _, latent = model(imgs, cfg.mask_ratio, adv_images=x_adv)
    if not cfg.uses_hsic:
        return {"loss": mae_loss, "mae_loss": mae_loss.detach(), "hsic": torch.zeros((), device=imgs.device)}
    hsic = hsic_normalized_cca(latent, x_adv, sigma=cfg.hsic_sigma, ridge=cfg.hsic_ridge)
    return {"loss": mae_loss + cfg.mi_xpl * hsic, "mae_loss": mae_loss.detach(), "hsic": hsic.detach()}
