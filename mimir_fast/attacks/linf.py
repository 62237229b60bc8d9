"""The L∞ PGD loop every attack here shares, and the mode attacks run in (eval, weights frozen).

``linf_pgd`` maximises ``objective(x)`` over the ε-ball around the images intersected with [0, 1]:
``x ← clip₀¹(x₀ + clip±ε(x + α·sign(∇ₓ objective) − x₀))``, with input gradients only. ``eot_iter`` K > 1 steps
on the mean of K gradients, each from its own forward (EOT, for randomised models).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run an attack on ``model``: eval mode (no drop-path, as torchattacks does) and its trainable parameters
    set to ``requires_grad=False``; both are restored afterwards.

    Freezing the weights is what keeps a compiled attack at ≈ 2 forward passes per step: AOTAutograd compiles
    one backward graph for every input that requires grad, and ``autograd.grad(loss, x)`` cannot prune it at
    run time, so with trainable weights the compiled backward also computes every weight gradient (≈ 3 passes;
    the eager engine prunes them). With frozen weights the attack gets its own graph, whose backward returns
    the input gradient only, and the eager graph saves no activations for weight gradients. Under FSDP2 the
    flags are left alone (its unsharded parameters do not follow the sharded ones' flag).
    """
    was_training = model.training
    frozen = [] if _is_fsdp(model) else [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch build without distributed support
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


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
    eot_iter: int = 1,
) -> torch.Tensor:
    """Projected sign-gradient ascent on ``objective``.

    Args:
        objective: maps a batch (N, C, H, W) to the scalar to maximise.
        images: (N, C, H, W) clean images in [0, 1].
        eps: L∞ radius in pixel units; alpha: step size; steps: number of steps K ≥ 0.
        start: optional (N, C, H, W) initial offset added to ``images`` (then clamped to [0, 1]), e.g.
            ``uniform_start(images, eps)``; None starts at the clean images.
        eot_iter: K ≥ 1 gradients averaged per step (EOT; see the module docstring); 1 for a deterministic model.

    Returns:
        Detached adversarial images (N, C, H, W), within ``eps`` of ``images`` and in [0, 1].
    """
    if eot_iter < 1:
        raise ValueError(f"eot_iter must be >= 1, got {eot_iter}")
    x0 = images.detach()
    if eps == 0 and steps > 0:  # the ball is the point x0: every step projects back onto it (no gradient needed)
        return x0.clone()
    x = x0.clone() if start is None else (x0 + start).clamp(0, 1)
    for _ in range(steps):
        x.requires_grad_(True)
        # no reference to the gradient outlives the step: under CUDA graphs it is a graph output, and one still
        # alive when the graph replays forces another recording
        x = x.detach() + alpha * eot_gradient(objective, x, eot_iter).sign()
        x = (x0 + (x - x0).clamp(-eps, eps)).clamp(0, 1)
    return x.detach()


def eot_gradient(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eot_iter: int = 1) -> torch.Tensor:
    """The mean over ``eot_iter`` forward/backward passes of ∇ₓ ``objective(x)``, for ``x`` (N, C, H, W) that
    requires grad: (N, C, H, W). Each pass draws the model's randomness afresh (from the global RNG)."""
    (grad,) = torch.autograd.grad(objective(x), x)
    for _ in range(eot_iter - 1):
        grad = grad + torch.autograd.grad(objective(x), x)[0]
    return grad / eot_iter if eot_iter > 1 else grad
