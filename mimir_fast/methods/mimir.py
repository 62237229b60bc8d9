"""``--method mimir``: MIMIR pretraining (Xu et al., arXiv 2312.04960), the default.

Each step: ``x_adv = PGD(x)`` on the MAE self-reconstruction loss (fresh mask per attack step, random start),
then the clean ``x`` is reconstructed from ``x_adv`` under an independent mask, plus ``λ · HSIC_nCCA(latent,
x_adv)`` over the per-replica batch. Draws happen in the reference's order: the attack's random start, one mask
per attack step, then the training mask. docs/fidelity.md lists where this differs from the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..attacks import pgd_mae
from ..configs import Options, at_least, check, positive
from ..ops import hsic_normalized_cca
from ..train.compile import attack_target
from ..train.pretrain import PretrainMethod
from .registry import register


@dataclass(kw_only=True)
class MimirOptions(Options):
    """MIMIR's HSIC penalty (the attack is the shared pretraining attack: steps, eps, alpha, attack_mask_ratio)."""

    mi_xpl: float = 1e-5
    """λ, the weight of HSIC(latent, x_adv) in the loss (MIMIR: 1e-5); 0 turns the penalty off."""
    hsic_sigma: float = 5.0
    """HSIC Gaussian bandwidth factor σ (MIMIR: 5)."""
    hsic_ridge: float = 1e-5
    """HSIC ridge ε in (K̃ + ε m I) (MIMIR: 1e-5)."""

    def validate(self) -> None:
        at_least("mi_xpl", self.mi_xpl, 0)
        positive("hsic_sigma", self.hsic_sigma)
        positive("hsic_ridge", self.hsic_ridge)


@register
class Mimir(PretrainMethod):
    name = "mimir"
    summary = "MAE on PGD examples of the MAE loss, plus λ·HSIC(latent, x_adv)"
    options_cls = MimirOptions

    @property
    def uses_hsic(self) -> bool:
        return self.options.mi_xpl > 0

    @property
    def loss_keys(self) -> tuple[str, ...]:
        return ("loss", "mae_loss", "hsic") if self.uses_hsic else ("loss",)

    def check(self) -> None:
        check(not self.uses_hsic or self.cfg.batch_size >= 2,
              f"batch_size must be >= 2 when the HSIC penalty is on (mi_xpl > 0), got {self.cfg.batch_size}")

    def losses(self, model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss`` for clean ``imgs`` (N, C, H, W) in [0, 1]; with the penalty on, also the detached ``mae_loss``
        and ``hsic``. With DDP, pass the wrapped model: the attack runs on the module inside (``attack_target``)."""
        cfg, opts = self.cfg, self.options
        x_adv = pgd_mae(attack_target(model), imgs, eps=cfg.eps / 255, alpha=cfg.alpha / 255, steps=cfg.steps,
                        mask_ratio=cfg.attack_mask_ratio)
        mae_loss, _, _, latent = model(imgs, cfg.mask_ratio, adv_images=x_adv)
        if not self.uses_hsic:
            return {"loss": mae_loss}
        hsic = hsic_normalized_cca(latent, x_adv, sigma=opts.hsic_sigma, ridge=opts.hsic_ridge)
        return {"loss": mae_loss + opts.mi_xpl * hsic, "mae_loss": mae_loss.detach(), "hsic": hsic.detach()}
