"""The reference-style step: the execution choices of the reference MIMIR pretraining loop, for comparison only.

Written from a description of the reference loop (no reference code is copied); the maths is MIMIR's, only the
way it is executed differs from ``mimir_fast.train.engine.train_step``:

- **eager**, with the plain-PyTorch op paths (``MIMIR_FAST_KERNELS=torch``: none of this project's Triton kernels);
- **fp16 autocast with ``torch.amp.GradScaler``** on CUDA, used as MAE's loss scaler uses it: scale, backward,
  unscale, the total gradient norm, step (``GradScaler.step`` reads ``found_inf`` back: a sync), update. On the
  CPU: fp32 and a disabled scaler, which is what the reference's ``torch.cuda.amp.GradScaler()`` becomes
  without CUDA;
- **the attack**: L∞ PGD with a uniform random start, ``autograd.grad`` of the *unscaled* loss under autocast,
  the model in eval mode, a fresh mask per step (as ``mimir_fast.attacks.pgd_mae``, but written out here);
- **HSIC on the CPU**: the Gaussian kernel matrices are built on the device under autocast (the Gram matrix
  X·Xᵀ in fp16 on CUDA), copied to the host as float32 (the reference's ``.type(torch.FloatTensor)``),
  right-centred there with an explicit H = I − 11ᵀ/m matmul and turned into R = K̃ (K̃ + εmI)⁻¹ with two
  ``torch.inverse`` calls; gradients flow back through the inverses and the copy. A failed inverse gives 0;
- **host syncs every step**: ``math.isfinite`` on the HSIC value (the penalty is left out when it is not finite
  or is 0), ``loss.item()`` checked with ``math.isfinite`` (the reference exits; here the step is counted), and
  ``torch.cuda.synchronize()`` at the end of the step, as MAE's pretraining loop does;
- **torch.optim.AdamW** with its defaults (not fused: foreach on CUDA, a per-parameter loop on the CPU).
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
from torch import nn

from mimir_fast.ops._dispatch import ENV_VAR
from mimir_fast.train.optim import param_groups_weight_decay


@contextlib.contextmanager
def plain_torch_ops():
    """Run every ``mimir_fast.ops`` op on its plain-PyTorch reference path (the policy is read on each call)."""
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = "torch"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old


def _centred_kernel_on_cpu(a: torch.Tensor, sigma: float) -> torch.Tensor:
    """K·H on the CPU (float32) for samples ``a`` (m, ...) on the device: ``K = exp(−D / 2σ²d)`` with
    ``D_ij = |‖a_i‖² + ‖a_j‖² − 2 a_i·a_j|`` computed where ``a`` lives (under the caller's autocast)."""
    m = a.shape[0]
    a = a.reshape(m, -1)
    sq = (a * a).sum(dim=1, keepdim=True)  # (m, 1)
    gram = a @ a.T  # fp16 under CUDA autocast, as in the reference
    dist = (sq + sq.T - 2 * gram).abs()
    k = torch.exp(-dist / (2 * sigma**2 * a.shape[1])).type(torch.FloatTensor)  # copy to the host
    h = torch.eye(m) - torch.full((m, m), 1.0 / m)  # built on the CPU
    return k @ h


def hsic_normalized_cca_cpu(x: torch.Tensor, y: torch.Tensor, sigma: float = 5.0, ridge: float = 1e-5) -> torch.Tensor:
    """MIMIR's normalised-CCA HSIC as the reference executes it: a float32 CPU scalar (0 if an inverse fails).

    Args:
        x: (m, ...) latent on the device; y: (m, ...) adversarial images on the device.
    """
    m = x.shape[0]
    kx, ky = _centred_kernel_on_cpu(x, sigma), _centred_kernel_on_cpu(y, sigma)
    reg = ridge * m * torch.eye(m)
    try:
        rx = kx @ torch.inverse(kx + reg)
        ry = ky @ torch.inverse(ky + reg)
    except RuntimeError:  # torch.linalg.LinAlgError: a singular system
        return torch.zeros(())
    return (rx * ry.T).sum()


def reference_pgd(model: nn.Module, images: torch.Tensor, *, eps: float, alpha: float, steps: int,
                  mask_ratio: float) -> torch.Tensor:
    """L∞ PGD on the self-reconstruction loss of ``images`` (N, C, H, W) in [0, 1], as the reference runs it."""
    was_training = model.training
    model.eval()
    x0 = images.clone().detach()
    adv = (x0 + torch.empty_like(x0).uniform_(-eps, eps)).clamp(0, 1).detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        cost = model(adv, mask_ratio)[0]
        grad = torch.autograd.grad(cost, adv)[0]
        adv = adv.detach() + alpha * grad.sign()
        adv = (x0 + (adv - x0).clamp(-eps, eps)).clamp(0, 1).detach()
    model.train(was_training)
    return adv


class ReferenceStep:
    """One reference-style MIMIR (or MAE) pretraining step of ``model`` per call on a device batch."""

    def __init__(self, model: nn.Module, cfg, device: torch.device, lr: float = 1e-4):
        self.model, self.cfg, self.device = model, cfg, device
        self.optimizer = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=lr,
                                           betas=(0.9, 0.95))
        cuda = device.type == "cuda"
        self.amp_dtype = torch.float16 if cuda else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=cuda)
        self.precision = "fp16+GradScaler" if cuda else "fp32 (no GradScaler on the CPU)"
        self.nonfinite_losses = 0
        """Steps whose loss was not finite (the reference would have exited)."""
        self.hsic_left_out = 0
        """Steps whose HSIC value was not finite or was 0, so the penalty was left out (the reference's rule)."""

    def __call__(self, imgs: torch.Tensor) -> float:
        """One step on ``imgs`` (N, C, H, W) in [0, 1]; returns the loss read back to the host."""
        cfg, model = self.cfg, self.model
        model.train()
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype
                    else contextlib.nullcontext())
        with plain_torch_ops():
            with autocast:
                if cfg.method == "mae":
                    loss = model(imgs, cfg.mask_ratio)[0]
                else:
                    x_adv = reference_pgd(model, imgs, eps=cfg.eps / 255, alpha=cfg.alpha / 255, steps=cfg.steps,
                                          mask_ratio=cfg.attack_mask_ratio)
                    loss, _, _, latent = model(imgs, cfg.mask_ratio, adv_images=x_adv)
                    opts = cfg.options
                    if opts.mi_xpl > 0:
                        hsic = hsic_normalized_cca_cpu(latent, x_adv, opts.hsic_sigma, opts.hsic_ridge)
                        value = float(hsic.detach())  # a host read of the CPU value
                        if math.isfinite(value) and value != 0:
                            loss = loss + opts.mi_xpl * hsic
                        else:
                            self.hsic_left_out += 1
            loss_value = loss.item()  # a device-to-host sync
            if not math.isfinite(loss_value):
                self.nonfinite_losses += 1
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
            torch.norm(torch.stack([torch.norm(g, 2.0) for g in grads]), 2.0)  # MAE's loss scaler logs this norm
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return loss_value
