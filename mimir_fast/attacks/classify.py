"""Attacks on classifiers, all L∞ on inputs in [0, 1], input gradients only, under ``linf.attack_mode``.

- ``pgd``: PGD on the mean cross-entropy from a uniform random start (torchattacks' ``PGD``, as MIMIR uses it);
- ``trades_attack``: TRADES' maximisation of KL(f(x) ‖ f(x')) from x + 0.001·N(0, I);
- ``pgd_mi``: MIMIR's adaptive attack, PGD on CE(f(x'), y) + λ·HSIC_nCCA(features(x'), x').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import hsic_normalized_cca
from .linf import attack_mode, linf_pgd, uniform_start


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    start: torch.Tensor | None = None,
    eot_iter: int = 1,
) -> torch.Tensor:
    """Untargeted PGD on cross-entropy. images (N, C, H, W) in [0, 1], labels (N,) -> x_adv (N, C, H, W).

    ``eot_iter`` > 1 averages that many input gradients per step (EOT, for randomised defences)."""
    if start is None and random_start:
        start = uniform_start(images, eps)
    with attack_mode(model):
        return linf_pgd(lambda x: F.cross_entropy(model(x), labels), images, eps=eps, alpha=alpha, steps=steps,
                        start=start, eot_iter=eot_iter)


def trades_attack(model: nn.Module, images: torch.Tensor, *, eps: float, alpha: float, steps: int) -> torch.Tensor:
    """TRADES' adversarial example: maximise Σ KL(softmax f(x) ‖ softmax f(x')) from x + 0.001·N(0, I)."""
    with attack_mode(model):
        with torch.no_grad():
            p_clean = F.softmax(model(images), dim=1)
        start = 0.001 * torch.randn_like(images)
        return linf_pgd(
            lambda x: F.kl_div(F.log_softmax(model(x), dim=1), p_clean, reduction="sum"),
            images, eps=eps, alpha=alpha, steps=steps, start=start,
        )


def pgd_mi(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    lam: float = 1e-5,
    sigma: float = 5.0,
    start: torch.Tensor | None = None,
    eot_iter: int = 1,
) -> torch.Tensor:
    """MIMIR's PGD-MI: maximise CE + λ·HSIC(features(x'), x'). Needs ``forward_features``/``forward_head``.
    ``eot_iter`` as in ``pgd``."""
    if start is None:
        start = uniform_start(images, eps)

    def objective(x: torch.Tensor) -> torch.Tensor:
        features = model.forward_features(x)  # (N, D)
        ce = F.cross_entropy(model.forward_head(features), labels)
        return ce + lam * hsic_normalized_cca(features, x, sigma=sigma)

    with attack_mode(model):
        return linf_pgd(objective, images, eps=eps, alpha=alpha, steps=steps, start=start, eot_iter=eot_iter)
