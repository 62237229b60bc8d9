"""MAE's reconstruction loss, fused: the masked (optionally patch-normalised) MSE, reading the image directly.

``forward_loss`` patchifies the target image into an (N, L, p·p·C) copy, normalises every patch by its mean and
unbiased variance (``norm_pix_loss``), takes the per-patch mean squared error against ``pred`` and averages it
over the removed patches. ``masked_mse_loss`` computes the same scalar from one kernel that reads each patch's
pixels straight from the (N, C, H, W) image, with no patchified or normalised copy, and writes one partial sum
per block of patches (summed deterministically, no host sync). Its backward writes the gradient of ``pred``
and, through the normalisation, of the image: in MIMIR's PGD attack the reconstruction target is the
adversarial image itself, so the image needs a gradient.

Numerics: the kernel computes in fp32 whatever the input dtypes and returns an fp32 scalar; the reference
computes in ``promote_types(imgs, pred, mask)`` (fp32 in the model, whose mask is fp32).
"""

from __future__ import annotations

import torch

from ._dispatch import pow2_bucket, use_triton
from .masking import masking_indices

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_PATCH_ELEMENTS = 8192
"""Largest p·p·C the kernel holds in one register row (kernels/masked_mse_loss.py ``MAX_K``)."""


def masked_mse_loss_ref(
    imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix: bool = False
) -> torch.Tensor:
    """The model's own path: ``MaskedAutoencoderViT.forward_loss`` with ``patchify`` inlined.

    Bit-identical to the model for its square images (``patch_size = model.patch_embed.patch_size[0]``,
    ``norm_pix = model.norm_pix_loss``); rectangular images follow the same (row, col, channel) patch order.
    """
    p = patch_size
    n, c, h, w = imgs.shape
    target = imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (N, gh, gw, p, p, C)
    target = target.reshape(n, (h // p) * (w // p), p * p * c)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)  # (N, L)
    return (loss * mask).sum() / mask.sum()


# ---------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("mimir_fast::masked_mse_loss_fwd", mutates_args=())
def masked_mse_loss_fwd(
    imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    from mimir_fast.kernels import masked_mse_loss as kernels

    # pred as it comes (the model's is the view x[:, 1:, :]): the kernel reads it through its strides
    return kernels.masked_mse_loss_fwd(imgs.contiguous(), pred, mask.contiguous(), patch_size, norm_pix)


@masked_mse_loss_fwd.register_fake
def _(imgs, pred, mask, patch_size, norm_pix):
    return imgs.new_empty((), dtype=torch.float32), imgs.new_empty((), dtype=torch.float32)


@torch.library.custom_op("mimir_fast::masked_mse_loss_bwd", mutates_args=())
def masked_mse_loss_bwd(
    grad_loss: torch.Tensor, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, mask_sum: torch.Tensor,
    patch_size: int, norm_pix: bool, need_imgs: bool, need_pred: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from mimir_fast.kernels import masked_mse_loss as kernels

    return kernels.masked_mse_loss_bwd(
        grad_loss.contiguous(), imgs.contiguous(), pred, mask.contiguous(), mask_sum.contiguous(),
        patch_size, norm_pix, need_imgs, need_pred,
    )


@masked_mse_loss_bwd.register_fake
def _(grad_loss, imgs, pred, mask, mask_sum, patch_size, norm_pix, need_imgs, need_pred):
    d_imgs = imgs.new_empty(imgs.shape if need_imgs else (0,))
    d_pred = pred.new_empty(pred.shape if need_pred else (0,))
    return d_imgs, d_pred


def _setup_context(ctx, inputs, output):
    imgs, pred, mask, patch_size, norm_pix = inputs
    ctx.save_for_backward(imgs, pred, mask, output[1])
    ctx.patch_size, ctx.norm_pix = patch_size, norm_pix
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss, _grad_mask_sum):
    imgs, pred, mask, mask_sum = ctx.saved_tensors
    need_imgs, need_pred = ctx.needs_input_grad[:2]
    if not (need_imgs or need_pred):
        return None, None, None, None, None
    d_imgs, d_pred = masked_mse_loss_bwd(
        grad_loss, imgs, pred, mask, mask_sum, ctx.patch_size, ctx.norm_pix, need_imgs, need_pred
    )
    # mask is a weight, not a learned input: no gradient (see masked_mse_loss).
    return d_imgs if need_imgs else None, d_pred if need_pred else None, None, None, None


masked_mse_loss_fwd.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------- shapes (dispatch check, benchmarks)
SHAPES = {
    "tiny": dict(n=4, c=3, px=16, p=4, norm_pix=True),
    "vit_b_224_b256": dict(n=256, c=3, px=224, p=16, norm_pix=True),  # MAE/MIMIR ImageNet, 196 patches
    "vit_b_224_b256_plain": dict(n=256, c=3, px=224, p=16, norm_pix=False),  # without norm_pix_loss
    "cifar_p2_b256": dict(n=256, c=3, px=32, p=2, norm_pix=True),  # MIMIR CIFAR-10, patch 2, 256 patches
    "cifar_p2_b128": dict(n=128, c=3, px=32, p=2, norm_pix=True),
}
"""Named shapes: N images of C × px × px (``px_w``: another width), patch p, norm-pix or not. ``tiny``: the CPU."""

GRAD_ARGNUMS = (0, 1)
"""Inputs of ``make_inputs`` that take gradients: imgs (the attack's target is the image) and pred."""


def shape_of(imgs: torch.Tensor, patch_size: int, norm_pix: bool) -> dict:
    """A call's sizes in ``make_inputs``' vocabulary."""
    n, c, h, w = imgs.shape
    shape = dict(n=n, c=c, px=h, p=patch_size, norm_pix=bool(norm_pix))
    if w != h:
        shape["px_w"] = w
    return shape


def shape_class(shape: dict) -> str:
    """The dispatch records' class of a shape: the batch rounded up to a power of two, the rest exact."""
    return (f"n{pow2_bucket(shape['n'])}-c{shape['c']}-px{shape['px']}x{shape.get('px_w', shape['px'])}"
            f"-p{shape['p']}-{'norm' if shape['norm_pix'] else 'plain'}")


def make_inputs(shape: dict, device: torch.device, dtype: torch.dtype, requires_grad: bool) -> tuple:
    """Random (imgs, pred, mask, patch_size, norm_pix) of ``shape`` (three quarters of the patches removed);
    ``GRAD_ARGNUMS`` need gradients; the mask is float32, as the model's."""
    n, c, h, p = shape["n"], shape["c"], shape["px"], shape["p"]
    w = shape.get("px_w", h)
    length = (h // p) * (w // p)
    imgs = torch.randn(n, c, h, w, device=device, dtype=dtype, requires_grad=requires_grad)
    # the decoder's x[:, 1:, :] (CLS row dropped), a view with row stride (1 + L)·K, as the model passes it
    pred = torch.randn(n, 1 + length, p * p * c, device=device, dtype=dtype, requires_grad=requires_grad)[:, 1:]
    _, _, mask = masking_indices(torch.rand(n, length, device=device), length // 4)
    return imgs, pred, mask, p, shape["norm_pix"]


# ---------------------------------------------------------------------------------------------- public op
def masked_mse_loss(
    imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix: bool = False
) -> torch.Tensor:
    """MAE's reconstruction loss: the per-patch mean squared error averaged with the weights ``mask``.

    ``Σ_{n,l} mask[n, l] · mean_k (pred[n, l, k] − t[n, l, k])² / Σ mask`` with t = patchify(imgs), each patch
    normalised to ``(t − mean) / sqrt(var + 1e-6)`` (unbiased variance) when ``norm_pix``.

    Args:
        imgs: (N, C, H, W) target images, H and W divisible by ``patch_size``.
        pred: (N, L, p·p·C) per-patch predictions in patchify's (row, col, channel) order, L = (H/p)·(W/p).
        mask: (N, L) float weights, MAE's mask (1 = removed, counted; 0 = kept, ignored) or any weights.
        patch_size: p.
        norm_pix: normalise each target patch (MAE's ``norm_pix_loss``).

    Returns:
        A scalar: fp32 from the kernel; ``promote_types(imgs, pred, mask)`` from the reference (fp32 for the
        model's fp32 mask). NaN when ``mask`` sums to zero, as the reference.

    Gradients flow to pred and to imgs (through the normalisation), each only when needed. ``mask`` is treated
    as a constant: the kernel path gives it no gradient.
    """
    if imgs.dim() != 4 or pred.dim() != 3 or mask.dim() != 2:
        raise ValueError(f"masked_mse_loss: expected imgs (N, C, H, W), pred (N, L, p·p·C), mask (N, L); got "
                         f"{tuple(imgs.shape)}, {tuple(pred.shape)}, {tuple(mask.shape)}")
    n, c, h, w = imgs.shape
    p = patch_size
    if p < 1 or h % p or w % p:
        raise ValueError(f"masked_mse_loss: image {h}x{w} is not a grid of {p}x{p} patches")
    length = (h // p) * (w // p)
    if tuple(pred.shape) != (n, length, p * p * c) or tuple(mask.shape) != (n, length):
        raise ValueError(f"masked_mse_loss: imgs {tuple(imgs.shape)} with patch_size {p} need pred "
                         f"({n}, {length}, {p * p * c}) and mask ({n}, {length}); got {tuple(pred.shape)} and "
                         f"{tuple(mask.shape)}")
    supported = {imgs.dtype, pred.dtype, mask.dtype} <= set(SUPPORTED_DTYPES) and p * p * c <= MAX_PATCH_ELEMENTS
    reason = (f"needs float32/float16/bfloat16 imgs, pred and mask and p·p·C ≤ {MAX_PATCH_ELEMENTS}; got "
              f"{imgs.dtype}, {pred.dtype}, {mask.dtype}, p·p·C = {p * p * c}")
    shape = shape_of(imgs, patch_size, norm_pix)
    if not use_triton("masked_mse_loss", imgs, pred, mask, supported=supported, reason=reason, dtype=pred.dtype,
                      shape=shape, shape_class=shape_class(shape)):
        return masked_mse_loss_ref(imgs, pred, mask, patch_size, norm_pix)
    loss, _ = masked_mse_loss_fwd(imgs, pred, mask, patch_size, norm_pix)
    return loss
