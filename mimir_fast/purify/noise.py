"""Gaussian pixel noise in /255 units, with a per-image standard deviation σ: NIM's training corruption and
De^3's test-time noise. Images are (N, C, H, W) in [0, 1]; σ is a scalar or (N,)."""

from __future__ import annotations

import torch

from ..errors import ConfigError

SIGMA_DISTS = ("gamma", "uniform", "fixed")


def sample_sigma(
    n: int,
    dist: str = "gamma",
    *,
    sigma: float = 75.0,
    shape: float = 25.0,
    scale: float = 3.0,
    low: float = 0.0,
    high: float = 150.0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-image noise scales σ (n,) in /255 units, drawn on ``device`` (no host sync).

    ``gamma``: Gamma(shape k, scale θ), mean k·θ, variance k·θ² (NIM: k = 25, θ = 3); ``uniform``: U(low, high);
    ``fixed``: ``sigma``. ``generator`` is used by the uniform draw only (torch's Gamma sampler takes none).
    """
    if dist == "fixed":
        return torch.full((n,), float(sigma), device=device)
    if dist == "uniform":
        return torch.rand(n, device=device, generator=generator) * (high - low) + low
    if dist == "gamma":
        k = torch.full((n,), float(shape), device=device)
        return torch._standard_gamma(k) * scale  # Gamma(k, 1)·θ = Gamma(k, scale θ)
    raise ConfigError(f"unknown nim_sigma_dist {dist!r}; choose one of: {', '.join(SIGMA_DISTS)}")


def add_noise(imgs: torch.Tensor, sigma: torch.Tensor | float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """``imgs + (σ/255)·ε``, not clamped (as NIM releases it). ε ~ N(0, I) is drawn fresh unless ``noise``
    (N, C, H, W) is given."""
    if noise is None:
        noise = torch.randn_like(imgs)
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1:
        sigma = sigma.view(-1, 1, 1, 1)
    return imgs + noise * (sigma / 255)
