"""A plain re-derivation of facebookresearch/mae's ``MaskedAutoencoderViT`` maths, for tests only.

Built independently of ``mimir_fast``: timm's ``PatchEmbed`` and ``Block`` (with timm's explicit
softmax(QKᵀ/√d)V attention instead of the fused kernel), MAE's numpy sin-cos positions, and
loop-based patchify and loss. Parameter creation and initialisation follow MAE's order, so with the same
seed a fresh model has MAE's exact initial weights.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from timm.models.vision_transformer import Block, PatchEmbed
from torch import nn


def mae_sincos(dim: int, grid: int) -> np.ndarray:
    """MAE's (1 + g·g, dim) table: zeros for CLS, then [sin, cos](x ω) for x then [sin, cos](y ω)."""

    def one_axis(d, positions):
        omega = np.arange(d // 2, dtype=np.float32)
        omega /= d / 2.0
        omega = 1.0 / 10000**omega
        angles = np.einsum("m,d->md", positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    xs, ys = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    table = np.concatenate([one_axis(dim // 2, xs), one_axis(dim // 2, ys)], axis=1)
    return np.concatenate([np.zeros([1, dim]), table], axis=0)


class ReferenceMAE(nn.Module):
    def __init__(
        self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), norm_pix_loss=False,
    ):
        super().__init__()
        self.p = patch_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
        )
        self.norm = norm_layer(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
             for _ in range(decoder_depth)]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)
        self.norm_pix_loss = norm_pix_loss
        for blk in [*self.blocks, *self.decoder_blocks]:
            blk.attn.fused_attn = False  # timm's explicit attention maths, not SDPA
        self._init()

    def _init(self):
        g = int(self.patch_embed.num_patches**0.5)
        self.pos_embed.data.copy_(torch.from_numpy(mae_sincos(self.pos_embed.shape[-1], g)).float()[None])
        self.decoder_pos_embed.data.copy_(
            torch.from_numpy(mae_sincos(self.decoder_pos_embed.shape[-1], g)).float()[None]
        )
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def patchify(self, imgs):
        """Loop over patches; each flattened in (row, col, channel) order."""
        n, c, h, w = imgs.shape
        p, g = self.p, h // self.p
        rows = []
        for i in range(g):
            for j in range(g):
                patch = imgs[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (N, C, p, p)
                rows.append(patch.permute(0, 2, 3, 1).reshape(n, p * p * c))
        return torch.stack(rows, dim=1)

    def random_masking(self, x, mask_ratio):
        n, length, d = x.shape
        keep = int(length * (1 - mask_ratio))
        noise = torch.rand(n, length, device=x.device)
        order = torch.argsort(noise, dim=1)  # ascending: the smallest noise values are kept
        restore = torch.argsort(order, dim=1)
        kept = torch.stack([x[b, order[b, :keep]] for b in range(n)])
        mask = torch.ones(n, length, device=x.device)
        for b in range(n):
            mask[b, order[b, :keep]] = 0
        return kept, mask, restore

    def forward_encoder(self, imgs, mask_ratio):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        x, mask, restore = self.random_masking(x, mask_ratio)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, restore

    def forward_decoder(self, latent, restore):
        x = self.decoder_embed(latent)
        n, t, d = x.shape
        length = restore.shape[1]
        order = torch.argsort(restore, dim=1)  # shuffled position -> patch index
        full = self.mask_token.expand(n, length, d).clone()
        for b in range(n):
            full[b, order[b, : t - 1]] = x[b, 1:]  # the visible tokens go back to their patches
        x = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, imgs, pred, mask):
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mu = target.mean(-1, keepdim=True)
            var = ((target - mu) ** 2).sum(-1, keepdim=True) / (target.shape[-1] - 1)  # unbiased
            target = (target - mu) / torch.sqrt(var + 1e-6)
        per_patch = ((pred - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs, mask_ratio=0.75, adv_images=None):
        source = imgs if adv_images is None else adv_images
        latent, mask, restore = self.forward_encoder(source, mask_ratio)
        pred = self.forward_decoder(latent, restore)
        return self.forward_loss(imgs, pred, mask), pred, mask, latent
