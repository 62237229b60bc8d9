"""The reconstruction figure of MAE's demo notebook: original, masked, reconstruction, reconstruction + visible.

With ``norm_pix_loss`` the model predicts normalised patches; they are mapped back to pixels with each
original patch's mean and unbiased variance (the statistics the loss normalised by), so the panels show
images rather than per-patch z-scores.

The loss covers the masked patches only, so the decoder's outputs at the visible positions are untrained;
de-normalised with their patch's statistics they look like colour noise. The reconstruction panel therefore
("recon. (masked)") shows the predicted masked patches and greys out the visible ones (``VISIBLE_GREY``);
"recon. + visible" pastes the predictions into the visible patches of the original, as MAE's notebook does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

PANELS = ("original", "masked", "recon. (masked)", "recon. + visible")
VISIBLE_GREY = 0.5  # fill of the visible patches in the reconstruction panel (their outputs are untrained)


@torch.no_grad()
def reconstruction_panels(model, images: torch.Tensor, mask_ratio: float, seed: int = 0) -> torch.Tensor:
    """Four panels per image: a (n, 4, C, H, W) tensor in [0, 1] for ``images`` (n, C, H, W): the original, the
    visible patches, the predicted masked patches (visible ones grey) and the predictions pasted into the original.

    The mask comes from a generator seeded with ``seed``, so the figure does not touch the global RNG.
    """
    was_training = model.training
    model.eval()
    n = images.shape[0]
    num_patches = model.patch_embed.num_patches
    noise = torch.rand(n, num_patches, generator=torch.Generator().manual_seed(seed)).to(images.device)
    latent, mask, ids_restore = model.forward_encoder(images, mask_ratio, noise)
    pred = model.forward_decoder(latent, ids_restore).float()  # (n, L, p·p·C)
    if model.norm_pix_loss:
        target = model.patchify(images)
        pred = pred * (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    recon = model.unpatchify(pred).clamp(0, 1)
    removed = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, pred.shape[-1]).to(pred.dtype))  # 1 = removed
    masked = images * (1 - removed)
    predicted = recon * removed + VISIBLE_GREY * (1 - removed)
    pasted = images * (1 - removed) + recon * removed
    model.train(was_training)
    return torch.stack([images, masked, predicted, pasted], dim=1)


def save_reconstruction_figure(model, images: torch.Tensor, mask_ratio: float, path: str | Path, seed: int = 0) -> Path:
    """Write a PNG grid (one row per image, one column per panel, labelled) to ``path``."""
    panels = reconstruction_panels(model, images, mask_ratio, seed).cpu()
    n, k, c, h, w = panels.shape
    scale = max(1, 96 // max(h, w))  # small images are enlarged, pixel for pixel
    tiles = panels.reshape(n * k, c, h, w)
    if scale > 1:
        tiles = F.interpolate(tiles, scale_factor=scale, mode="nearest")
    grid = make_grid(tiles, nrow=k, padding=2, pad_value=1.0)
    body = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())
    header = 14
    canvas = Image.new("RGB", (body.width, body.height + header), "white")
    canvas.paste(body, (0, header))
    draw = ImageDraw.Draw(canvas)
    cell = body.width / k
    for i, name in enumerate(PANELS):
        draw.text((int(i * cell) + 4, 1), name, fill="black")
    path = Path(path)
    canvas.save(path)
    return path
