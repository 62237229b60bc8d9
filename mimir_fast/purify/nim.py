"""NIM pretraining (You et al., NeurIPS 2023; ``nim-maep-spec.md`` §A.1) on ``MaskedAutoencoderViT``.

Noise replaces masking: every image gets Gaussian noise ``x̃ = x + (σ/255)·ε`` (ε ~ N(0, I) per pixel and
channel, *not* clamped), with σ drawn per image (``sample_sigma``: Gamma(shape 25, scale 3) by default, i.e.
mean 75 and std 15 on the 0–255 scale; fixed and uniform are the other choices). The encoder sees *all*
patches of ``x̃`` and the decoder predicts every patch of the clean ``x``; the loss is MAE's (norm-pix) MSE
averaged over *all* patches.

It is the existing model at mask ratio 0: ``int(L · (1 − 0)) = L`` patches are kept, so the encoder runs on
the full token set (the same attention kernels, with every token visible) and the decoder inserts no mask
tokens. Only the loss differs: the model's own ``forward_loss`` averages over removed patches, and at ratio 0
there are none (0/0), so ``nim_forward`` takes the fused ``masked_mse_loss`` with a mask of ones, which
averages the per-patch MSE over every patch — the released ``loss.mean()`` over (N, L, p·p·C).
The training forward goes through ``model(...)`` itself, so DDP, FSDP2 and ``torch.compile`` see it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..ops.masked_mse_loss import masked_mse_loss
from ..train.config import NIM_SIGMA_DISTS as SIGMA_DISTS
from ..train.parallel import unwrap


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

    ``gamma``: Gamma(shape k, scale θ), mean k·θ, variance k·θ² (NIM: k = 25, θ = 3, i.e. rate 1/3 as the
    released code passes it); ``uniform``: U(low, high) (released default U(0, 150)); ``fixed``: ``sigma``.
    ``generator`` is used by the uniform draw only (torch's Gamma sampler takes none).
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
    """``imgs + (σ/255)·ε`` for ``imgs`` (N, C, H, W) in [0, 1] and σ a scalar or (N,) in /255 units.

    ε ~ N(0, I) is drawn fresh unless ``noise`` (N, C, H, W) is given. The result is not clamped (as released).
    """
    if noise is None:
        noise = torch.randn_like(imgs)
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1:
        sigma = sigma.view(-1, 1, 1, 1)
    return imgs + noise * (sigma / 255)


def cfg_sigma(cfg, n: int, device: torch.device) -> torch.Tensor:
    """``sample_sigma`` with a ``PretrainConfig``'s ``nim_*`` fields: σ (n,) in /255 units."""
    return sample_sigma(n, cfg.nim_sigma_dist, sigma=cfg.nim_sigma, shape=cfg.nim_gamma_shape,
                        scale=cfg.nim_gamma_scale, low=cfg.nim_sigma_low, high=cfg.nim_sigma_high, device=device)


def patch_stats(model: nn.Module, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and std ``sqrt(unbiased var + 1e-6)`` of ``imgs`` (N, C, H, W): two (N, L, 1) tensors,
    the statistics norm-pix normalises each target patch by."""
    patches = unwrap(model).patchify(imgs)
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5


def nim_forward(model: nn.Module, imgs: torch.Tensor, noisy_imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NIM-AdvDef's ``forward(imgs, noisy_imgs)``: encode all patches of ``noisy_imgs``, predict ``imgs``.

    Args:
        model: a ``MaskedAutoencoderViT`` (or DDP/FSDP around one).
        imgs: (N, C, H, W) clean targets; noisy_imgs: (N, C, H, W) encoder input.

    Returns ``(pred, loss)`` in the released order: ``pred`` (N, C, H, W), the prediction unpatchified and,
    with norm-pix, de-normalised with the *clean* ``imgs``' patch statistics (as released); ``loss``, the
    (norm-pix) MSE averaged over all patches and pixels.
    """
    inner = unwrap(model)
    # mask ratio 0: all L tokens kept (in a random order the decoder undoes); the model's masked loss is 0/0
    _, patches, _, _ = model(imgs, 0.0, adv_images=noisy_imgs)  # (N, L, p·p·C)
    everything = torch.ones(patches.shape[:2], device=patches.device, dtype=torch.float32)
    loss = masked_mse_loss(imgs, patches, everything, inner.patch_embed.patch_size[0], inner.norm_pix_loss)
    if inner.norm_pix_loss:
        mean, std = patch_stats(inner, imgs)
        patches = patches * std + mean
    return inner.unpatchify(patches), loss


def nim_losses(model: nn.Module, imgs: torch.Tensor, cfg) -> dict[str, torch.Tensor]:
    """One NIM pretraining step on clean ``imgs`` (N, C, H, W) in [0, 1]: σ per image from the ``nim_*``
    fields, noise on every pixel, full-token reconstruction of ``imgs``.

    Returns ``loss`` (to backpropagate), and detached ``mae_loss`` (the same MSE) and ``hsic`` (always 0;
    the pretraining log's usual columns). No host sync.
    """
    sigma = cfg_sigma(cfg, imgs.shape[0], imgs.device)
    _, loss = nim_forward(model, imgs, add_noise(imgs, sigma))
    return {"loss": loss, "mae_loss": loss.detach(), "hsic": torch.zeros((), device=imgs.device)}


@torch.no_grad()
def save_nim_figure(model: nn.Module, images: torch.Tensor, path, sigma: float = 75.0, seed: int = 0):
    """NIM's counterpart of the reconstruction figure: one row per image of ``images`` (n, C, H, W), with the
    original, the noisy input (σ in /255 units, shown clamped) and the reconstruction (de-normalised with the
    clean patch statistics, as released; clamped). The noise comes from a generator seeded with ``seed``, so
    the figure does not touch the global RNG. Returns the PNG's ``Path``."""
    from pathlib import Path

    import torch.nn.functional as F
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(images.device)
    noisy = add_noise(images, sigma, eps)
    n, length = images.shape[0], inner.patch_embed.num_patches
    order = torch.arange(length, device=images.device, dtype=torch.float32).expand(n, length)
    latent, _, ids_restore = inner.forward_encoder(noisy, 0.0, noise=order)
    pred = inner.forward_decoder(latent, ids_restore).float()
    if inner.norm_pix_loss:
        mean, std = patch_stats(inner, images)
        pred = pred * std + mean
    inner.train(was_training)
    panels = torch.stack([images, noisy.clamp(0, 1), inner.unpatchify(pred).clamp(0, 1)], dim=1).cpu()
    names = ("original", f"noisy, sigma {sigma:g}/255", "reconstruction")  # ASCII: PIL's default font
    k, (c, h, w) = len(names), panels.shape[2:]
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


def typical_sigma(cfg) -> float:
    """The mean σ (/255 units) of a ``PretrainConfig``'s ``nim_*`` distribution (the figure's noise level)."""
    if cfg.nim_sigma_dist == "fixed":
        return cfg.nim_sigma
    if cfg.nim_sigma_dist == "uniform":
        return (cfg.nim_sigma_low + cfg.nim_sigma_high) / 2
    return cfg.nim_gamma_shape * cfg.nim_gamma_scale
