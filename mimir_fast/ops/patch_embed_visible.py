"""MAE's encoder input, fused: patch embedding, positional embedding and the gather of the visible patches.

``forward_encoder`` computes ``patch_embed(x) + pos_embed[:, 1:]`` for all L patches and then keeps L_keep of
them with ``torch.gather``. ``patch_embed_visible`` returns the same (N, L_keep, D) tokens from one kernel
that reads and embeds only the kept patches: with MAE's 75% masking, three quarters of the patch-embedding
GEMM and the full (N, L, D) intermediate disappear. Its backward writes the image gradient (exact zeros on the
masked patches, which MIMIR's attack needs), the patch-conv weight and bias gradients and, if asked, the
positional-embedding gradient; only the gradients autograd needs are computed.

Numerics: the kernel accumulates in fp32 and rounds once; the reference rounds the conv output to the conv
dtype before adding ``pos_embed``. Under autocast the inputs of the conv are cast as ``F.conv2d`` would be, so
the output dtype matches the reference's (``promote_types(conv dtype, pos_embed.dtype)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import pow2_bucket, use_triton
from .masking import masking_indices

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def patch_embed_visible_ref(
    imgs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pos_embed: torch.Tensor, ids_keep: torch.Tensor
) -> torch.Tensor:
    """The model's own path: ``patch_embed(imgs) + pos_embed``, then MAE's gather of the kept tokens.

    Bit-identical to ``MaskedAutoencoderViT.forward_encoder`` up to ``random_masking``'s gather, with
    ``weight, bias = model.patch_embed.proj.weight, .bias`` and ``pos_embed = model.pos_embed[0, 1:]``.
    """
    p = weight.shape[-1]
    x = F.conv2d(imgs, weight, bias, stride=p).flatten(2).transpose(1, 2) + pos_embed  # (N, L, D)
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (N, L_keep, D)


# ---------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("mimir_fast::patch_embed_visible_fwd", mutates_args=())
def patch_embed_visible_fwd(
    imgs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pos_embed: torch.Tensor, ids_keep: torch.Tensor
) -> torch.Tensor:
    from mimir_fast.kernels import patch_embed_visible as kernels

    return kernels.patch_embed_visible_fwd(
        imgs.contiguous(), weight.contiguous(), bias.contiguous(), pos_embed.contiguous(), ids_keep.contiguous()
    )


@patch_embed_visible_fwd.register_fake
def _(imgs, weight, bias, pos_embed, ids_keep):
    dtype = torch.promote_types(imgs.dtype, pos_embed.dtype)
    return imgs.new_empty((imgs.shape[0], ids_keep.shape[1], weight.shape[0]), dtype=dtype)


@torch.library.custom_op("mimir_fast::patch_embed_visible_bwd_imgs", mutates_args=())
def patch_embed_visible_bwd_imgs(
    grad_out: torch.Tensor, weight: torch.Tensor, ids_keep: torch.Tensor, imgs_shape: list[int]
) -> torch.Tensor:
    from mimir_fast.kernels import patch_embed_visible as kernels

    return kernels.patch_embed_visible_bwd_imgs(
        grad_out.contiguous(), weight.contiguous(), ids_keep.contiguous(), tuple(imgs_shape)
    )


@patch_embed_visible_bwd_imgs.register_fake
def _(grad_out, weight, ids_keep, imgs_shape):
    return weight.new_empty(imgs_shape)


@torch.library.custom_op("mimir_fast::patch_embed_visible_bwd_weight", mutates_args=())
def patch_embed_visible_bwd_weight(
    grad_out: torch.Tensor, imgs: torch.Tensor, ids_keep: torch.Tensor, weight_shape: list[int]
) -> torch.Tensor:
    from mimir_fast.kernels import patch_embed_visible as kernels

    return kernels.patch_embed_visible_bwd_weight(
        grad_out.contiguous(), imgs.contiguous(), ids_keep.contiguous(), tuple(weight_shape)
    )


@patch_embed_visible_bwd_weight.register_fake
def _(grad_out, imgs, ids_keep, weight_shape):
    return imgs.new_empty(weight_shape)


def _setup_context(ctx, inputs, output):
    imgs, weight, bias, pos_embed, ids_keep = inputs
    ctx.save_for_backward(imgs, weight, ids_keep)
    ctx.imgs_shape = list(imgs.shape)
    ctx.bias_dtype = bias.dtype
    ctx.pos_shape, ctx.pos_dtype = tuple(pos_embed.shape), pos_embed.dtype


def _backward(ctx, grad_out):
    imgs, weight, ids_keep = ctx.saved_tensors
    need_imgs, need_weight, need_bias, need_pos, _ = ctx.needs_input_grad
    d = weight.shape[0]
    # The conv's output is in its own dtype (imgs, weight, bias share it); autograd hands it the cast gradient.
    dy = grad_out.to(weight.dtype).contiguous()
    d_imgs = d_weight = d_bias = d_pos = None
    if need_imgs:
        d_imgs = patch_embed_visible_bwd_imgs(dy, weight, ids_keep, ctx.imgs_shape)
    if need_weight:
        d_weight = patch_embed_visible_bwd_weight(dy, imgs, ids_keep, list(weight.shape))
    if need_bias:
        d_bias = dy.reshape(-1, d).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
    if need_pos:
        d_pos = torch.zeros(ctx.pos_shape, device=grad_out.device, dtype=torch.float32)
        d_pos.index_add_(0, ids_keep.reshape(-1), grad_out.reshape(-1, d).float())
        d_pos = d_pos.to(ctx.pos_dtype)
    return d_imgs, d_weight, d_bias, d_pos, None


patch_embed_visible_fwd.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------- shapes (dispatch check, benchmarks)
SHAPES = {
    "tiny": dict(n=4, c=3, px=16, p=4, d=40, keep=4),
    "vit_b_224_b256": dict(n=256, c=3, px=224, p=16, d=768, keep=49),  # ViT-B/16, 75% masking
    "vit_s_224_b256": dict(n=256, c=3, px=224, p=16, d=384, keep=49),  # ViT-S/16, 75% masking
    "cifar_p2_b256": dict(n=256, c=3, px=32, p=2, d=384, keep=64),  # MIMIR CIFAR-10 ViT-S, patch 2
}
"""Named shapes: N images of C × px × px, patch p, width D, L_keep kept patches. ``tiny`` is for the CPU."""

GRAD_ARGNUMS = (0, 1, 2)
"""Inputs of ``make_inputs`` that take gradients: imgs (the attack's), weight and bias; pos_embed is frozen (MAE)."""


def shape_of(imgs: torch.Tensor, weight: torch.Tensor, ids_keep: torch.Tensor) -> dict:
    """A call's sizes in ``make_inputs``' vocabulary."""
    return dict(n=imgs.shape[0], c=imgs.shape[1], px=imgs.shape[2], p=weight.shape[-1], d=weight.shape[0],
                keep=ids_keep.shape[1])


def shape_class(shape: dict) -> str:
    """The dispatch records' class of a shape: the batch rounded up to a power of two, the rest exact."""
    return (f"n{pow2_bucket(shape['n'])}-c{shape['c']}-px{shape['px']}-p{shape['p']}-d{shape['d']}"
            f"-keep{shape['keep']}")


def make_inputs(shape: dict, device: torch.device, dtype: torch.dtype, requires_grad: bool) -> tuple:
    """Random (imgs, weight, bias, pos_embed, ids_keep) of ``shape``; ``GRAD_ARGNUMS`` need gradients."""
    n, c, px, p, d = shape["n"], shape["c"], shape["px"], shape["p"], shape["d"]
    length = (px // p) ** 2
    imgs = torch.rand(n, c, px, px, device=device, dtype=dtype, requires_grad=requires_grad)
    weight = (torch.randn(d, c, p, p, device=device) / (c * p * p) ** 0.5).to(dtype).requires_grad_(requires_grad)
    bias = (0.02 * torch.randn(d, device=device)).to(dtype).requires_grad_(requires_grad)
    pos = torch.randn(length, d, device=device, dtype=dtype)  # frozen, as in MAE
    ids_keep, _, _ = masking_indices(torch.rand(n, length, device=device), shape["keep"])
    return imgs, weight, bias, pos, ids_keep


# ---------------------------------------------------------------------------------------------- public op
def patch_embed_visible(
    imgs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pos_embed: torch.Tensor, ids_keep: torch.Tensor
) -> torch.Tensor:
    """Patch-embed only the kept patches and add their positional embedding.

    ``out[n, j] = conv_patch(imgs[n], l) + bias + pos_embed[l]`` with ``l = ids_keep[n, j]``: the tokens of
    ``forward_encoder`` after ``random_masking``, before the CLS token is prepended.

    Args:
        imgs: (N, C, H, W) images, H == W, divisible by p.
        weight: (D, C, p, p) patch conv weight (``patch_embed.proj.weight``); p = ``weight.shape[-1]``.
        bias: (D,) patch conv bias.
        pos_embed: (L, D) positional embedding of the L = (H/p)² patches, no CLS row (``pos_embed[0, 1:]``).
        ids_keep: (N, L_keep) int64 kept patch indices, distinct per sample, in token order (MAE's
            ``ids_shuffle[:, :len_keep]``, e.g. from ``ops.masking.masking_indices``).

    Returns:
        (N, L_keep, D) tokens in ``promote_types(conv dtype, pos_embed.dtype)``, the conv dtype being
        ``imgs.dtype`` or the autocast dtype.

    Gradients flow to imgs (exact zeros on masked patches), weight, bias and pos_embed, each only when needed.
    """
    n, c, h, w = imgs.shape
    d, wc, p, _ = weight.shape
    if wc != c or h != w or h % p or weight.shape[-2] != p:
        raise ValueError(f"patch_embed_visible: imgs {tuple(imgs.shape)} and weight {tuple(weight.shape)} need "
                         "matching channels, square p × p patches and a square image with a side divisible by p")
    if bias.shape != (d,) or pos_embed.shape != ((h // p) ** 2, d):
        raise ValueError(f"patch_embed_visible: bias must be ({d},) and pos_embed ({(h // p) ** 2}, {d}), got "
                         f"{tuple(bias.shape)} and {tuple(pos_embed.shape)}")
    if ids_keep.dim() != 2 or ids_keep.shape[0] != n:
        raise ValueError(f"patch_embed_visible: ids_keep must be (N={n}, L_keep), got {tuple(ids_keep.shape)}")
    conv_dtype = imgs.dtype
    if torch.is_autocast_enabled(imgs.device.type):  # F.conv2d runs in the autocast dtype
        conv_dtype = torch.get_autocast_dtype(imgs.device.type)
    supported = (
        {imgs.dtype, weight.dtype, bias.dtype} <= set(SUPPORTED_DTYPES)
        and pos_embed.dtype in SUPPORTED_DTYPES
        and (conv_dtype != imgs.dtype or imgs.dtype == weight.dtype == bias.dtype)
        and ids_keep.dtype == torch.int64
    )
    reason = (f"needs float32/float16/bfloat16 tensors (imgs, weight and bias of one dtype) and int64 ids_keep; "
              f"got {imgs.dtype}, {weight.dtype}, {bias.dtype}, {pos_embed.dtype}, {ids_keep.dtype}")
    shape = shape_of(imgs, weight, ids_keep)
    if not use_triton("patch_embed_visible", imgs, weight, bias, pos_embed, ids_keep, supported=supported,
                      reason=reason, dtype=conv_dtype, shape=shape, shape_class=shape_class(shape)):
        return patch_embed_visible_ref(imgs, weight, bias, pos_embed, ids_keep)
    imgs, weight, bias = imgs.to(conv_dtype), weight.to(conv_dtype), bias.to(conv_dtype)
    return patch_embed_visible_fwd(imgs, weight, bias, pos_embed, ids_keep)
