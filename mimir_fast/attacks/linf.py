"""The L∞ PGD loop every attack here shares, and the eval-mode switch attacks run under.

``linf_pgd`` maximises ``objective(x)`` over the ε-ball around ``images`` intersected with [0, 1]:
``x ← clip₀¹(x₀ + clip±ε(x + α·sign(∇ₓ objective) − x₀))``. Only the input gradient is computed
(``torch.autograd.grad(loss, x)``), so weight-gradient work is pruned and no ``.grad`` is touched.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (no drop-path) and restore its mode afterwards, as torchattacks does."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def uniform_start(images: torch.Tensor, eps: float) -> torch.Tensor:
    """Noise for a uniform random start in the ε-ball, drawn from the global RNG: (N, C, H, W)."""
    return torch.empty_like(images).uniform_(-eps, eps)


def linf_pgd(
    objective: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Projected sign-gradient ascent on ``objective``.

    Args:
        objective: maps a batch (N, C, H, W) to the scalar to maximise.
        images: (N, C, H, W) clean images in [0, 1].
        eps: L∞ radius in pixel units; alpha: step size; steps: number of steps K ≥ 0.
        start: optional (N, C, H, W) initial offset added to ``images`` (then clamped to [0, 1]), e.g.
            ``uniform_start(images, eps)``; None starts at the clean images.

    Returns:
        Detached adversarial images (N, C, H, W), within ``eps`` of ``images`` and in [0, 1].
    """
    x0 = images.detach()
    x = x0.clone() if start is None else (x0 + start).clamp(0, 1)
    for _ in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x), x)
        x = x.detach() + alpha * grad.sign()
        x = (x0 + (x - x0).clamp(-eps, eps)).clamp(0, 1)
    return x.detach()
