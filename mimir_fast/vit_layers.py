"""ViT building blocks with the parameter names of timm and facebookresearch/mae.

The names and shapes (``patch_embed.proj``, ``blocks.i.norm1``, ``blocks.i.attn.qkv``, ``blocks.i.attn.proj``,
``blocks.i.norm2``, ``blocks.i.mlp.fc1``, ``blocks.i.mlp.fc2``) are those of timm's ``PatchEmbed`` and ``Block``,
so MAE, MIMIR and timm state_dicts load with ``strict=True``. Attention goes through
``mimir_fast.ops.visible_attention`` (torch's ``scaled_dot_product_attention`` unless the Triton kernel is
selected); nothing here depends on timm.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .ops.visible_attention import visible_attention


class PatchEmbed(nn.Module):
    """Image to patch tokens with a strided convolution (``proj``).

    Args:
        img_size: square input side H = W, in pixels.
        patch_size: square patch side p; ``img_size`` must be a multiple of it.
        in_chans: input channels C.
        embed_dim: token width D.
        matmul: apply the convolution's weights as a matrix product over patches (the classifier, whose input
            gradient every attack step takes); the masked autoencoder embeds through ``ops.patch_embed_visible``.

    Shapes: ``(N, C, H, W) -> (N, L, D)`` with ``L = (H/p)·(W/p)``, tokens in row-major patch order.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 matmul: bool = False):
        super().__init__()
        self.matmul = matmul
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input is {tuple(x.shape[-2:])} pixels but the model expects {self.img_size}")
        if not self.matmul:
            return self.proj(x).flatten(2).transpose(1, 2)  # (N, D, h, w) -> (N, L, D)
        n, c = x.shape[:2]
        (h, w), p = self.grid_size, self.patch_size[0]
        patches = x.reshape(n, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w, c * p * p)
        # The convolution (stride = kernel) as one matrix product over flattened (C, p, p) patches: the same
        # weights and result up to rounding, with a far cheaper input gradient on the CPU, which every PGD and
        # AutoAttack step takes (29 images, 32 px, patch 16, D 128, one core: 10.3 ms forward + backward as a
        # convolution, 1.7 ms as a product).
        return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection.

    Shapes: ``(N, T, D) -> (N, T, D)``; heads are ``D / num_heads`` wide.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, T, head_dim)
        x = visible_attention(q, k, v)  # (N, heads, T, head_dim): the Triton kernel or SDPA (ops._dispatch)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    """Two-layer perceptron with exact (erf) GELU. Shapes: ``(..., D) -> (..., D)``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch per sample with probability ``p`` and scale the
    kept ones by ``1 / (1 - p)``; the identity in eval mode. Shapes: ``(N, ...) -> (N, ...)``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``.

    No dropout or layer-scale; drop-path is 0 in MAE pretraining and rises with depth in fine-tuning.
    Shapes: ``(N, T, D) -> (N, T, D)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
