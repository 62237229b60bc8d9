"""``--method nim``: NIM pretraining (You et al., NeurIPS 2023), the purifier behind De^3.

Noise replaces masking: every image gets ``x + (σ/255)·ε`` with σ drawn per image (Gamma(25, scale 3) by
default: mean 75, std 15 on the 0–255 scale), not clamped. The encoder sees every patch of the noisy image and
the decoder predicts every patch of the clean one; the loss is MAE's (norm-pix) MSE over all patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn
from torchvision.utils import make_grid

from ..configs import Options, at_least, check, choice
from ..data import visual_batch
from ..purify.de3 import patch_stats
from ..purify.noise import SIGMA_DISTS, add_noise, sample_sigma
from ..train.pretrain import PretrainMethod
from .registry import register


@dataclass(kw_only=True)
class NimOptions(Options):
    """The distribution of NIM's per-image noise std σ (/255 units)."""

    FLAG_PREFIX = "nim_"

    sigma_dist: str = "gamma"
    """Distribution of the per-image noise std σ (/255 units): gamma (NIM), uniform or fixed."""
    gamma_shape: float = 25.0
    """Shape k of σ ~ Gamma(k, scale θ) (NIM: 25; mean kθ = 75, std sqrt(k)·θ = 15)."""
    gamma_scale: float = 3.0
    """Scale θ of σ ~ Gamma(k, scale θ) (NIM: 3, i.e. rate 1/3)."""
    sigma_low: float = 0.0
    """Lower end of σ ~ U(low, high) with nim_sigma_dist uniform (/255 units)."""
    sigma_high: float = 150.0
    """Upper end of σ ~ U(low, high) with nim_sigma_dist uniform (/255 units; NIM's default 150)."""
    sigma: float = 75.0
    """σ with nim_sigma_dist fixed (/255 units)."""

    def validate(self) -> None:
        choice("nim_sigma_dist", self.sigma_dist, SIGMA_DISTS)
        check(self.gamma_shape > 0 and self.gamma_scale > 0,
              f"nim_gamma_shape and nim_gamma_scale must be > 0, got {self.gamma_shape} and {self.gamma_scale}")
        check(0 <= self.sigma_low <= self.sigma_high,
              f"nim_sigma_low and nim_sigma_high need 0 <= low <= high, got {self.sigma_low} and {self.sigma_high}")
        at_least("nim_sigma", self.sigma, 0, " (in /255 units)")

    def sample(self, n: int, device: torch.device) -> torch.Tensor:
        """σ (n,) in /255 units, drawn on ``device``."""
        return sample_sigma(n, self.sigma_dist, sigma=self.sigma, shape=self.gamma_shape, scale=self.gamma_scale,
                            low=self.sigma_low, high=self.sigma_high, device=device)

    @property
    def typical(self) -> float:
        """The distribution's mean σ (the figure's noise level)."""
        if self.sigma_dist == "fixed":
            return self.sigma
        if self.sigma_dist == "uniform":
            return (self.sigma_low + self.sigma_high) / 2
        return self.gamma_shape * self.gamma_scale


@register
class Nim(PretrainMethod):
    name = "nim"
    summary = "NIM: Gaussian noise on every pixel instead of masks; every patch reconstructed (De^3's purifier)"
    options_cls = NimOptions

    def losses(self, model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The (norm-pix) MSE of the clean ``imgs`` (N, C, H, W) reconstructed from their noisy copies."""
        noisy = add_noise(imgs, self.options.sample(imgs.shape[0], imgs.device))
        return {"loss": model(imgs, noisy_images=noisy)[0]}

    def after_run(self, model: nn.Module, output_dir: Path, device: torch.device) -> dict:
        images = visual_batch(self.cfg).to(device)
        return {"figure": save_nim_figure(model, images, output_dir / "reconstruction.png",
                                          sigma=self.options.typical, seed=self.cfg.seed)}


@torch.no_grad()
def save_nim_figure(model: nn.Module, images: torch.Tensor, path: str | Path, sigma: float = 75.0,
                    seed: int = 0) -> Path:
    """One row per image of ``images`` (n, C, H, W): the original, the noisy input (σ in /255 units, shown
    clamped) and the reconstruction (de-normalised with the clean patch statistics, as released; clamped). The
    noise comes from a generator seeded with ``seed``, so the figure leaves the global RNG alone."""
    was_training = model.training
    model.eval()
    eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(images.device)
    noisy = add_noise(images, sigma, eps)
    pred = model.reconstruct(noisy).float()
    if model.norm_pix_loss:
        mean, std = patch_stats(model, images)
        pred = pred * std + mean
    model.train(was_training)
    panels = torch.stack([images, noisy.clamp(0, 1), model.unpatchify(pred).clamp(0, 1)], dim=1).cpu()
    names = ("original", f"noisy, sigma {sigma:g}/255", "reconstruction")  # ASCII: PIL's default font
    n, k, (c, h, w) = images.shape[0], len(names), panels.shape[2:]
    tiles = panels.reshape(n * k, c, h, w)
    scale = max(1, 96 // max(h, w))
    if scale > 1:
        tiles = F.interpolate(tiles, scale_factor=scale, mode="nearest")
    grid = make_grid(tiles, nrow=k, padding=2, pad_value=1.0)
    body = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())
    canvas = Image.new("RGB", (body.width, body.height + 14), "white")
    canvas.paste(body, (0, 14))
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(names):
        draw.text((int(i * body.width / k) + 4, 1), name, fill="black")
    path = Path(path)
    canvas.save(path)
    return path
