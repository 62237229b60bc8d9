"""``accelerate(model)``: run a facebookresearch/mae or MIMIR ``MaskedAutoencoderViT`` on mimir_fast's ops.

The model's ``forward_encoder``, ``forward_decoder`` and ``forward_loss`` are replaced, on that instance only,
by versions that call the fused ops, and each block's attention by one that calls ``visible_attention``:

- encoder input: ``patch_embed_visible`` embeds only the kept patches (MAE's mask drawn the same way:
  ``torch.rand(N, L)`` then argsort, so a seed gives the same mask and the same outputs);
- decoder input: ``decoder_unshuffle`` puts the visible tokens back, fills mask tokens, adds positions;
- loss: ``masked_mse_loss`` reads the images directly (norm-pix with the unbiased variance, as MAE);
- attention: ``visible_attention`` (the Triton kernel or SDPA, whichever ``MIMIR_FAST_KERNELS`` and the
  measured table select).

Parameters, buffers and the state_dict are untouched, so checkpoints load and save as before. Each op
dispatches per call (``mimir_fast.ops._dispatch``): on CPU tensors, or with ``MIMIR_FAST_KERNELS=torch``, the
references run. A model of this package's own ``MaskedAutoencoderViT`` already calls these ops and is
returned as it is.
"""

from __future__ import annotations

from types import MethodType

import torch
from torch import nn

from .models_mae import MaskedAutoencoderViT, masking_indices
from .ops import decoder_unshuffle, masked_mse_loss, patch_embed_visible, visible_attention

_REQUIRED = ("patch_embed", "cls_token", "pos_embed", "blocks", "norm", "decoder_embed", "mask_token",
             "decoder_pos_embed", "decoder_blocks", "decoder_norm", "decoder_pred", "norm_pix_loss")


def _patch_size(model: nn.Module) -> int:
    return model.patch_embed.proj.kernel_size[0]


def _forward_encoder(self, x: torch.Tensor, mask_ratio: float):
    """MAE's ``forward_encoder`` on the fused gather: (N, C, H, W) -> latent (N, 1 + L_keep, D), mask, restore."""
    n, length = x.shape[0], self.pos_embed.shape[1] - 1
    grid = int(round(length**0.5))
    if tuple(x.shape[-2:]) != (grid * _patch_size(self),) * 2:
        raise ValueError(f"input is {tuple(x.shape[-2:])} pixels but the model expects "
                         f"{(grid * _patch_size(self),) * 2}")
    len_keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device)  # MAE's draw, in MAE's order
    ids_keep, ids_restore, mask = masking_indices(noise, len_keep)
    proj = self.patch_embed.proj
    x = patch_embed_visible(x, proj.weight, proj.bias, self.pos_embed[0, 1:], ids_keep)  # (N, L_keep, D)
    cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)
    x = torch.cat((cls, x), dim=1)
    for blk in self.blocks:
        x = blk(x)
    return self.norm(x), mask, ids_restore


def _forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """MAE's ``forward_decoder`` on the fused unshuffle: latent (N, 1 + L_keep, D) -> (N, L, p·p·C)."""
    x = self.decoder_embed(x)
    x = decoder_unshuffle(x, self.mask_token.reshape(-1), ids_restore, self.decoder_pos_embed[0])
    for blk in self.decoder_blocks:
        x = blk(x)
    x = self.decoder_pred(self.decoder_norm(x))
    return x[:, 1:, :]


def _forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAE's ``forward_loss`` on the fused loss: mean (norm-pix) squared error over the removed patches."""
    return masked_mse_loss(imgs, pred, mask, _patch_size(self), bool(self.norm_pix_loss))


def _attention_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """timm's ``Attention.forward`` with ``visible_attention``: (N, T, D) -> (N, T, D)."""
    if attn_mask is not None:
        raise ValueError("accelerated attention does not take an attention mask")
    n, t, d = x.shape
    qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each (N, heads, T, head_dim)
    if hasattr(self, "q_norm"):
        q, k = self.q_norm(q), self.k_norm(k)
    x = visible_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
    if hasattr(self, "norm"):
        x = self.norm(x)
    return self.proj_drop(self.proj(x)) if hasattr(self, "proj_drop") else self.proj(x)


def _check_attention(attn: nn.Module, where: str) -> None:
    for name in ("qkv", "proj", "num_heads"):
        if not hasattr(attn, name):
            raise ValueError(f"accelerate: {where} has no {name!r}; only timm-style attention is supported")
    head_dim = attn.qkv.in_features // attn.num_heads
    scale = getattr(attn, "scale", head_dim**-0.5)
    if abs(scale - head_dim**-0.5) > 1e-12 * head_dim**-0.5:
        raise ValueError(f"accelerate: {where} scales by {scale}, not head_dim^-0.5")
    drop = getattr(attn, "attn_drop", None)
    if getattr(drop, "p", 0.0):
        raise ValueError(f"accelerate: {where} has attention dropout {drop.p}; the fused attention has none")


def accelerate(model: nn.Module) -> nn.Module:
    """Make ``model`` (a facebookresearch/mae or MIMIR ``MaskedAutoencoderViT``) use mimir_fast's ops.

    Args:
        model: the autoencoder; changed in place (its methods, not its parameters).

    Returns:
        The same model. Outputs equal the original's for the same seed (the references bit for bit, the
        kernels within their tested precision).

    Raises:
        ValueError: the model lacks an attribute MAE's autoencoder has, or a block's attention differs from
            the plain softmax(QKᵀ/√d)V the fused ops compute (custom scale, attention dropout, a patch-embedding
            norm).
    """
    if isinstance(model, MaskedAutoencoderViT):
        return model  # already built on the ops
    missing = [name for name in _REQUIRED if not hasattr(model, name)]
    if missing:
        raise ValueError(f"accelerate: {type(model).__name__} is not an MAE MaskedAutoencoderViT "
                         f"(missing {', '.join(missing)})")
    proj = getattr(model.patch_embed, "proj", None)
    if not isinstance(proj, nn.Conv2d) or proj.kernel_size != proj.stride or proj.padding != (0, 0):
        raise ValueError("accelerate: patch_embed.proj must be a Conv2d with stride == kernel_size")
    if not isinstance(getattr(model.patch_embed, "norm", nn.Identity()), nn.Identity):
        raise ValueError("accelerate: patch_embed has a norm layer; the fused patch embedding has none")
    blocks = [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    blocks += [(f"decoder_blocks.{i}", b) for i, b in enumerate(model.decoder_blocks)]
    for where, blk in blocks:
        _check_attention(blk.attn, f"{where}.attn")
    model.forward_encoder = MethodType(_forward_encoder, model)
    model.forward_decoder = MethodType(_forward_decoder, model)
    model.forward_loss = MethodType(_forward_loss, model)
    for _, blk in blocks:
        blk.attn.forward = MethodType(_attention_forward, blk.attn)
    return model
