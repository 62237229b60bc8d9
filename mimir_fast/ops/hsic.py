"""Normalised-CCA HSIC, MIMIR's mutual-information penalty: for variables with m samples flattened to (m, d),
``tr(R_X R_Y)`` with ``R = K̃ (K̃ + ε m I)⁻¹``, K̃ the right-centred Gaussian kernel matrix of bandwidth σ√d.
Everything runs on the input's device in fp32 (fp64 for fp64 inputs), with no host sync; docs/fidelity.md lists
how the computation differs from the reference code and why.
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
        both inputs; 0 when the statistic is not finite. Never synchronises
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
        # K̃ and (K̃ + εmI)⁻¹ commute, so one solve gives R for both variables: (2, m, m)
        r, info = torch.linalg.solve_ex(k + (ridge * m) * eye, k)
        value = (r[0] * r[1].mT).sum()
        # a non-finite Gram matrix, a singular system (never for finite inputs: eigenvalues >= εm) or a non-finite
        # value gives 0 for this step, the reference's rule, decided on the device
        ok = finite & (info == 0).all() & torch.isfinite(value)
        return torch.where(ok, value, torch.zeros_like(value))
