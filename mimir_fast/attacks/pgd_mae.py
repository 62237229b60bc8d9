"""MIMIR's pretraining attack: L∞ PGD on the MAE self-reconstruction loss of the perturbed image.

Each step calls ``model(x_adv, mask_ratio)`` (a fresh mask; the target is x_adv itself, norm-pix included) and
takes the input gradient only, under ``linf.attack_mode`` (eval mode, weights frozen, restored afterwards).
"""

from __future__ import annotations

import torch
from torch import nn

from .linf import attack_mode, linf_pgd, uniform_start


def pgd_mae(
    model: nn.Module,
    images: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    mask_ratio: float = 0.75,
    random_start: bool = True,
) -> torch.Tensor:
    """Perturb ``images`` to maximise the model's masked self-reconstruction loss.

    Args:
        model: a ``MaskedAutoencoderViT`` (unwrapped from DDP): ``model(x, mask_ratio)[0]`` is its loss.
        images: (N, C, H, W) clean images in [0, 1].
        eps: L∞ radius, in [0, 1] pixel units (8/255 in MIMIR).
        alpha: step size, in pixel units (10/255 in MIMIR).
        steps: number of PGD steps K ≥ 1 (MIMIR: 1, i.e. FGSM with a random start).
        mask_ratio: mask ratio of each attack forward. MIMIR's attack calls the forward with its default,
            0.75, whatever the training mask ratio is.
        random_start: start from a uniform point in the ε-ball, clamped to [0, 1].

    Returns:
        (N, C, H, W) detached adversarial images with ``|x_adv − images| ≤ eps`` and values in [0, 1].
        Update rule: ``x ← clip₀¹(x₀ + clip±ε(x + α·sign(∇ₓ) − x₀))``.
    """
    start = uniform_start(images, eps) if random_start else None
    with attack_mode(model):
        return linf_pgd(lambda x: model(x, mask_ratio)[0], images, eps=eps, alpha=alpha, steps=steps, start=start)
