"""A drop-in ``models_mae`` for facebookresearch/mae and MIMIR: ``MaskedAutoencoderViT`` and its factories.

It has MAE's constructor arguments, methods, state_dict and masking RNG, MIMIR's adversarial forward
(``adv_images``), NIM's noisy forward (``noisy_images``) and a full-order ``reconstruct``. Factories: MAE's
``mae_vit_base_patch16``, ``mae_vit_large_patch16``, ``mae_vit_huge_patch14`` (decoder 512 × 8), MIMIR's
``mae_vit_ti``, ``mae_vit_small``, ``mae_vit_base``, ``mae_vit_large`` (decoder 128 × 2) and ``mae_vit_micro``.
Shapes: N batch, L patches, p patch side, D / Dd encoder / decoder width, L_keep = ``int(L · (1 − mask_ratio))``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError
from .ops.decoder_unshuffle import decoder_unshuffle
from .ops.masked_mse_loss import masked_mse_loss
from .ops.masking import masking_indices
from .ops.patch_embed_visible import patch_embed_visible
from .pos_embed import sincos_2d
from .vit_layers import Block, PatchEmbed


class MaskedAutoencoderViT(nn.Module):
    """Masked autoencoder with a ViT encoder and a light ViT decoder (MAE, He et al. 2021).

    Args follow facebookresearch/mae: ``img_size``, ``patch_size``, ``in_chans``, ``embed_dim``, ``depth``,
    ``num_heads``, ``decoder_embed_dim``, ``decoder_depth``, ``decoder_num_heads``, ``mlp_ratio``,
    ``norm_layer`` and ``norm_pix_loss`` (normalise each target patch by its mean and unbiased variance).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        norm_pix_loss: bool = False,
    ):
        super().__init__()
        self.in_chans = in_chans
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
        )
        self.norm = norm_layer(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)

        self.norm_pix_loss = norm_pix_loss
        self.initialize_weights()

    # ------------------------------------------------------------------ initialisation
    def initialize_weights(self) -> None:
        """MAE's init: frozen sin-cos positions, xavier-uniform linears and patch conv, N(0, .02) tokens."""
        grid = self.patch_embed.grid_size[0]
        self.pos_embed.data.copy_(sincos_2d(self.pos_embed.shape[-1], grid, cls_token=True).unsqueeze(0))
        self.decoder_pos_embed.data.copy_(
            sincos_2d(self.decoder_pos_embed.shape[-1], grid, cls_token=True).unsqueeze(0)
        )
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # ------------------------------------------------------------------ patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, L, p·p·C)``, each patch flattened as (row, col, channel)."""
        p = self.patch_embed.patch_size[0]
        n, c, h, w = imgs.shape
        if h != w or h % p:
            raise ValueError(f"patchify needs square images with a side divisible by {p}, got {h}x{w}")
        g = h // p
        x = imgs.reshape(n, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)  # (N, gh, gw, p, p, C)
        return x.reshape(n, g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, L, p·p·C) -> (N, C, H, W)``, the inverse of ``patchify``."""
        p = self.patch_embed.patch_size[0]
        n, length, _ = x.shape
        g = int(round(length**0.5))
        if g * g != length:
            raise ValueError(f"unpatchify needs a square number of patches, got {length}")
        c = x.shape[-1] // (p * p)
        x = x.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)  # (N, C, gh, p, gw, p)
        return x.reshape(n, c, g * p, g * p)

    # ------------------------------------------------------------------ masking
    def random_masking(
        self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking, drawn exactly as MAE draws it.

        Args:
            x: (N, L, D) patch tokens.
            mask_ratio: fraction of patches removed; ``int(L · (1 - mask_ratio))`` are kept.
            noise: optional (N, L) uniform noise; by default ``torch.rand(N, L)`` on ``x.device``, MAE's draw.

        Returns:
            ``x_masked`` (N, L_keep, D), ``mask`` (N, L) with 1 = removed, ``ids_restore`` (N, L).
        """
        n, length, d = x.shape
        len_keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        ids_keep, ids_restore, mask = masking_indices(noise, len_keep)
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        return x_masked, mask, ids_restore

    # ------------------------------------------------------------------ encoder / decoder / loss
    def forward_encoder(
        self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches of images ``x`` (N, C, H, W).

        Returns ``latent`` (N, 1 + L_keep, D) after the final norm (CLS first, then the kept tokens in
        shuffled order), ``mask`` (N, L) and ``ids_restore`` (N, L).
        """
        if tuple(x.shape[-2:]) != self.patch_embed.img_size:
            raise ValueError(f"input is {tuple(x.shape[-2:])} pixels but the model expects {self.patch_embed.img_size}")
        n, length = x.shape[0], self.patch_embed.num_patches
        len_keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)  # MAE's draw (random_masking's)
        ids_keep, ids_restore, mask = masking_indices(noise, len_keep)
        proj = self.patch_embed.proj
        # = random_masking(patch_embed(x) + pos_embed[:, 1:]), embedding only the kept patches
        x = patch_embed_visible(x, proj.weight, proj.bias, self.pos_embed[0, 1:], ids_keep)  # (N, L_keep, D)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)
        x = torch.cat((cls, x), dim=1)  # (N, 1 + L_keep, D)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Decode ``latent`` (N, 1 + L_keep, D) into per-patch pixel predictions (N, L, p·p·C)."""
        x = self.decoder_embed(x)  # (N, 1 + L_keep, Dd)
        # visible tokens back in patch order, mask tokens elsewhere, + positions: (N, 1 + L, Dd)
        x = decoder_unshuffle(x, self.mask_token.reshape(-1), ids_restore, self.decoder_pos_embed[0])
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the removed patches.

        Args:
            imgs: (N, C, H, W) targets. With ``norm_pix_loss`` each target patch is normalised by its own
                mean and *unbiased* variance: ``(x - μ) / sqrt(var + 1e-6)``.
            pred: (N, L, p·p·C) predictions.
            mask: (N, L), 1 = removed; only removed patches count.

        Returns:
            A scalar: the per-patch mean squared error averaged over removed patches.
        """
        if tuple(imgs.shape[-2:]) != self.patch_embed.img_size:
            raise ValueError(f"patchify needs {self.patch_embed.img_size} images, got {tuple(imgs.shape[-2:])}")
        return masked_mse_loss(imgs, pred, mask, self.patch_embed.patch_size[0], self.norm_pix_loss)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Predict every patch of images ``x`` (N, C, H, W) from all of them: no masking, patches in order, no
        random draw. Returns (N, L, p·p·C), normalised patches when the model was trained with norm-pix."""
        n, length = x.shape[0], self.patch_embed.num_patches
        order = torch.arange(length, device=x.device, dtype=torch.float32).expand(n, length)  # identity shuffle
        latent, _, ids_restore = self.forward_encoder(x, 0.0, noise=order)
        return self.forward_decoder(latent, ids_restore)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, adv_images: torch.Tensor | None = None, *,
                noisy_images: torch.Tensor | None = None):
        """MAE, MIMIR or NIM forward.

        ``forward(imgs, mask_ratio)`` returns ``(loss, pred, mask)`` as MAE does.
        ``forward(imgs, mask_ratio, adv_images=x_adv)`` encodes ``x_adv``, reconstructs the clean ``imgs``
        and returns ``(loss, pred, mask, latent)`` as MIMIR does; ``latent`` is (N, 1 + L_keep, D).
        ``forward(imgs, noisy_images=x_noisy)`` encodes every patch of ``x_noisy`` (no masking; ``mask_ratio`` is
        not used), reconstructs the clean ``imgs`` and returns ``(loss, pred)`` as NIM does: the (norm-pix) MSE
        averaged over all patches, and ``pred`` (N, L, p·p·C) in patch order.
        """
        if noisy_images is not None:
            pred = self.reconstruct(noisy_images)
            everything = torch.ones(pred.shape[:2], device=pred.device)
            return self.forward_loss(imgs, pred, everything), pred
        if adv_images is None:
            latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
            pred = self.forward_decoder(latent, ids_restore)
            return self.forward_loss(imgs, pred, mask), pred, mask
        latent, mask, ids_restore = self.forward_encoder(adv_images, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask, latent


# ---------------------------------------------------------------------- factories
_LN = partial(nn.LayerNorm, eps=1e-6)
_MAE_DECODER = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
_MIMIR_DECODER = dict(decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=16)


def _build(encoder: dict, decoder: dict, defaults: dict, kwargs: dict) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(**{**defaults, **encoder, **decoder, "mlp_ratio": 4, "norm_layer": _LN, **kwargs})


def mae_vit_base_patch16_dec512d8b(**kwargs) -> MaskedAutoencoderViT:
    """MAE ViT-B/16: 768 wide, 12 blocks, 12 heads; decoder 512 × 8."""
    return _build(dict(embed_dim=768, depth=12, num_heads=12), _MAE_DECODER, dict(patch_size=16), kwargs)


def mae_vit_large_patch16_dec512d8b(**kwargs) -> MaskedAutoencoderViT:
    """MAE ViT-L/16: 1024 wide, 24 blocks, 16 heads; decoder 512 × 8."""
    return _build(dict(embed_dim=1024, depth=24, num_heads=16), _MAE_DECODER, dict(patch_size=16), kwargs)


def mae_vit_huge_patch14_dec512d8b(**kwargs) -> MaskedAutoencoderViT:
    """MAE ViT-H/14: 1280 wide, 32 blocks, 16 heads; decoder 512 × 8."""
    return _build(dict(embed_dim=1280, depth=32, num_heads=16), _MAE_DECODER, dict(patch_size=14), kwargs)


def mae_vit_ti_dec128d2b(**kwargs) -> MaskedAutoencoderViT:
    """MIMIR ViT-Ti: 192 wide, 12 blocks, 3 heads; decoder 128 × 2, 16 heads."""
    return _build(dict(embed_dim=192, depth=12, num_heads=3), _MIMIR_DECODER, {}, kwargs)


def mae_vit_small_dec128d2b(**kwargs) -> MaskedAutoencoderViT:
    """MIMIR ViT-S: 384 wide, 12 blocks, 6 heads; decoder 128 × 2, 16 heads."""
    return _build(dict(embed_dim=384, depth=12, num_heads=6), _MIMIR_DECODER, {}, kwargs)


def mae_vit_base_dec128d2b(**kwargs) -> MaskedAutoencoderViT:
    """MIMIR ViT-B: 768 wide, 12 blocks, 12 heads; decoder 128 × 2, 16 heads."""
    return _build(dict(embed_dim=768, depth=12, num_heads=12), _MIMIR_DECODER, {}, kwargs)


def mae_vit_large_dec128d2b(**kwargs) -> MaskedAutoencoderViT:
    """MIMIR ViT-L: 1024 wide, 24 blocks, 16 heads; decoder 128 × 2, 16 heads."""
    return _build(dict(embed_dim=1024, depth=24, num_heads=16), _MIMIR_DECODER, {}, kwargs)


def mae_vit_micro_dec128d2b(**kwargs) -> MaskedAutoencoderViT:
    """A CPU-demo encoder: 128 wide, 6 blocks, 4 heads; MIMIR's decoder 128 × 2, 16 heads."""
    return _build(dict(embed_dim=128, depth=6, num_heads=4), _MIMIR_DECODER, {}, kwargs)


# MAE's and MIMIR's recommended names
mae_vit_base_patch16 = mae_vit_base_patch16_dec512d8b
mae_vit_large_patch16 = mae_vit_large_patch16_dec512d8b
mae_vit_huge_patch14 = mae_vit_huge_patch14_dec512d8b
mae_vit_ti = mae_vit_ti_dec128d2b
mae_vit_small = mae_vit_small_dec128d2b
mae_vit_base = mae_vit_base_dec128d2b
mae_vit_large = mae_vit_large_dec128d2b
mae_vit_micro = mae_vit_micro_dec128d2b

MODELS: dict[str, Callable[..., MaskedAutoencoderViT]] = {
    name: fn
    for name, fn in dict(globals()).items()
    if name.startswith("mae_vit_") and callable(fn)
}


def create_model(name: str, **kwargs) -> MaskedAutoencoderViT:
    """Build a registered model by name; an unknown name is a ``ConfigError`` that lists the choices."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)
