"""Normalised-CCA HSIC, MIMIR's mutual-information penalty (``MI/hsic.py`` ``hsic_normalized_cca``).

For a variable A with m samples flattened to (m, d):

1. ``D_ij = |‖a_i‖² + ‖a_j‖² − 2 a_i·a_j|`` (the Gram-matrix trick);
2. ``K = exp(−D / (2 σ² d))``, with d the variable's own flattened width (bandwidth σ√d);
3. ``K̃ = K H`` with ``H = I − 11ᵀ/m`` (right-centering only: each row minus its mean);
4. ``R = K̃ (K̃ + ε m I)⁻¹``.

The statistic is ``tr(R_X R_Y) = Σ_ij R_X[i,j] R_Y[j,i]``.

How this differs from the reference, and why:

- Everything runs in float32 (float64 for float64 inputs) on the input's device, also under autocast.
  The reference computes the Gram matrix in fp16 under autocast (it overflows once ‖a‖² exceeds ~32k,
  e.g. for ViT-B latents and ImageNet pixels), then copies the kernel matrices to the CPU for the
  centering and two inverses.
- The centering uses ``K − mean(K) = E − mean(E)`` with ``E = expm1(−D / 2σ²d) = K − 1``. The bandwidth
  σ√d is wide, so K ≈ 1 and ``K − mean(K)`` cancels most digits; ``expm1`` keeps them. In float32 this is
  about 30× closer to the float64 value than the reference's ``exp``-then-``K·H`` (tests/ops/test_hsic.py).
- ``R`` comes from one batched linear solve of both systems instead of two explicit inverses.
  ``K̃`` and ``(K̃ + εmI)⁻¹`` commute, so ``(K̃ + εmI)⁻¹ K̃`` is the same matrix.
- Nothing synchronises with the host. Failures are handled on the device:
  if a kernel matrix is non-finite, or the solve reports a singular system, or the value is non-finite,
  the function returns 0 for that call, so the step trains on the reconstruction loss alone (when the
  non-finite values are in ``y``, the pixels, ``x`` also gets an exactly zero gradient from it).
  That is the reference's behaviour: it returns 0 when an inverse fails, and its trainer skips a
  non-finite or zero penalty. For finite inputs the matrices are never singular: the eigenvalues of
  ``K̃`` are those of ``H K H``, all ≥ 0, so ``K̃ + εmI`` has eigenvalues ≥ εm > 0.
  Non-finite *inputs* mean the model has diverged; its reconstruction loss is then non-finite too,
  and the trainer stops at its next loss check.
"""

from __future__ import annotations

import torch

from .hsic_gram import gaussian_kernel_centered, hsic_gram

__all__ = ["gaussian_kernel_centered", "hsic_normalized_cca"]


def hsic_normalized_cca(x: torch.Tensor, y: torch.Tensor, sigma: float = 5.0, ridge: float = 1e-5) -> torch.Tensor:
    """MIMIR's normalised-CCA HSIC between two batches.

    Args:
        x: (m, ...) first variable, e.g. the encoder latent (m, 1 + L_keep, D); flattened per sample.
        y: (m, ...) second variable, e.g. the adversarial images (m, C, H, W); flattened per sample.
        sigma: Gaussian bandwidth factor σ (MIMIR: 5).
        ridge: ε in the regulariser ``ε m I`` (MIMIR: 1e-5).

    Returns:
        A float32 scalar (float64 for float64 inputs) on the inputs' device, differentiable with respect to
        both inputs; 0 when the statistic is not finite (see the module docstring). Never synchronises
        with the host. Half-precision inputs are upcast to float32, also under autocast.
    """
    m = x.shape[0]
    if y.shape[0] != m:
        raise ValueError(f"hsic_normalized_cca: x has {m} samples but y has {y.shape[0]}")
    if m < 2:
        raise ValueError(f"hsic_normalized_cca needs at least 2 samples, got {m}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        k = hsic_gram(x.reshape(m, -1), y.reshape(m, -1), sigma)  # (2, m, m): fp32, or fp64 for fp64 inputs
        finite = torch.isfinite(k).all()
        k = torch.where(finite, k, torch.zeros_like(k))
        eye = torch.eye(m, device=k.device, dtype=k.dtype)
        r, info = torch.linalg.solve_ex(k + (ridge * m) * eye, k)  # (2, m, m): (K̃ + εmI)⁻¹ K̃
        value = (r[0] * r[1].mT).sum()
        ok = finite & (info == 0).all() & torch.isfinite(value)
        return torch.where(ok, value, torch.zeros_like(value))
