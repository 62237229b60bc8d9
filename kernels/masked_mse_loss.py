"""MAE's reconstruction loss, fused: per-patch (normalised) targets read straight from the image, squared error,
per-patch mean, mask-weighted mean over the patches.

Shapes: imgs (N, C, H, W) with H = Gh·p, W = Gw·p; pred (N, L, K) with L = Gh·Gw and K = p·p·C in patchify's
(row i, column j, channel c) order, element k = (i·p + j)·C + c; mask (N, L) float weights. Rows r = n·L + l,
M = N·L of them; patch l sits at grid cell (gh, gw) = (l // Gw, l % Gw).

Forward (``_masked_mse_loss_fwd_kernel``), one program per block of BP patches, each patch a [BK ≥ K] row:

    t      = x                                   or, with norm_pix,   (x − μ) / s,
    μ      = Σ_k x_k / K,   s = sqrt(Σ_k (x_k − μ)² / (K − 1) + 1e-6)      (unbiased variance, MAE's)
    loss_r = Σ_k (pred_rk − t_rk)² / K
    out    = Σ_r mask_r · loss_r / Σ_r mask_r

The lanes of a row are laid out in the image's (c, i, j) order, so that the p pixels of a patch row are
contiguous for the image loads, and the matching pred element (i·p + j)·C + c is loaded for each lane (all
lanes of a patch still fall in its K contiguous pred elements). The pixels are read from the NCHW image by
pointer arithmetic: no patchified copy. Everything is computed in fp32 (μ and the variance in two passes over
the registers). Each program writes its partial Σ mask·loss and Σ mask; the launcher sums the partials with
torch (deterministic, no atomics, no host sync). The result and Σ mask are fp32 scalars.

Backward (``_masked_mse_loss_bwd_kernel``), the same blocks, g = the loss's gradient, S = Σ mask (both read from
device memory):

    grad_pred_rk = 2 (pred_rk − t_rk) / K · mask_r / S · g
    g_t          = −grad_pred                                     (kept in fp32, not rounded)
    grad_x       = g_t                                            without norm_pix, else
    grad_x       = (g_t − mean(g_t)) / s − t · Σ_k(g_t,k t_k) / ((K − 1) s)

(from ∂μ/∂x_j = 1/K and ∂s/∂x_j = t_j / ((K − 1) s)). Every pixel belongs to exactly one patch, so every element
of grad_imgs is written once (patches with zero weight get exact zeros). Each of the two gradients is computed
only when asked for (NEED_* flags).

Limits: K ≤ MAX_K = 8192 (one patch per register row; p ≤ 52 for C = 3). K = 1 with norm_pix divides by zero,
as the reference's unbiased variance does. Block sizes are fixed heuristics (no autotune, so the interpreter
needs no special path), not tuned on a GPU: BK = next power of two ≥ K, BP·BK ≤ 2048 elements per tile,
4 warps (8 for tiles of 4096 elements and more).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _utils

MAX_K = 8192
"""Largest patch (p·p·C elements) one program row holds."""
TILE_ELEMENTS = 2048
"""Patches × padded patch elements of one tile (BP · BK) when the patch is small."""
EPS = 1e-6
"""MAE's norm_pix_loss epsilon, added to the unbiased variance."""


@triton.jit
def _patch_offsets(o_r, o_k, L, GW, W, HW, CHW, P: tl.constexpr, C: tl.constexpr):
    """Image offsets [BP, BK] and pred offsets [BP, BK] of rows ``o_r`` and lanes ``o_k`` (image order c, i, j)."""
    o_n = o_r // L
    o_l = o_r % L
    o_base = o_n * CHW + (o_l // GW) * (P * W) + (o_l % GW) * P  # [BP] patch origin in imgs
    o_c = o_k // (P * P)
    o_i = (o_k // P) % P
    o_j = o_k % P
    o_img = o_base[:, None] + (o_c * HW + o_i * W + o_j)[None, :]  # [BP, BK]
    o_pred = o_r[:, None] * (P * P * C) + ((o_i * P + o_j) * C + o_c)[None, :]  # [BP, BK] patchify order
    return o_img, o_pred


@triton.jit
def _target(b_x, m_k, K, BP: tl.constexpr, NORM_PIX: tl.constexpr, EPS_: tl.constexpr):
    """The target rows t [BP, BK] (zero on padding lanes) and their scale s [BP] (1 without norm_pix)."""
    if NORM_PIX:
        b_mean = tl.sum(b_x, axis=1) / K  # [BP]
        b_xc = tl.where(m_k[None, :], b_x - b_mean[:, None], 0.0)  # [BP, BK]
        b_var = tl.sum(b_xc * b_xc, axis=1) / (K - 1)  # [BP] unbiased
        b_s = tl.sqrt(b_var + EPS_)  # [BP]
        b_t = b_xc / b_s[:, None]
    else:
        b_s = tl.full([BP], 1.0, tl.float32)
        b_t = b_x
    return b_t, b_s


@triton.jit
def _masked_mse_loss_fwd_kernel(
    x_ptr,  # imgs (N, C, H, W), contiguous
    pred_ptr,  # pred (N, L, K), contiguous
    mask_ptr,  # mask (N, L), contiguous
    part_ptr,  # partials (2, n_programs) fp32: Σ mask·loss, then Σ mask
    M, L, GW, W, HW, CHW, K, N_PROGRAMS,
    P: tl.constexpr, C: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, NORM_PIX: tl.constexpr,
    EPS_: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    o_r = i_b * BP + tl.arange(0, BP)  # [BP] patches
    o_k = tl.arange(0, BK)  # [BK] patch elements, image order
    m_r = o_r < M
    m_k = o_k < K
    m_rk = m_r[:, None] & m_k[None, :]
    o_img, o_pred = _patch_offsets(o_r, o_k, L, GW, W, HW, CHW, P, C)  # [BP, BK], [BP, BK]

    b_x = tl.load(x_ptr + o_img, mask=m_rk, other=0.0).to(tl.float32)  # [BP, BK]
    b_pred = tl.load(pred_ptr + o_pred, mask=m_rk, other=0.0).to(tl.float32)  # [BP, BK]
    b_m = tl.load(mask_ptr + o_r, mask=m_r, other=0.0).to(tl.float32)  # [BP]
    b_t, _ = _target(b_x, m_k, K, BP, NORM_PIX, EPS_)
    b_d = tl.where(m_rk, b_pred - b_t, 0.0)  # [BP, BK]
    b_loss = tl.sum(b_d * b_d, axis=1) / K  # [BP] per-patch mean squared error
    tl.store(part_ptr + i_b, tl.sum(b_loss * b_m, axis=0))
    tl.store(part_ptr + N_PROGRAMS + i_b, tl.sum(b_m, axis=0))


@triton.jit
def _masked_mse_loss_bwd_kernel(
    x_ptr,  # imgs (N, C, H, W), contiguous
    pred_ptr,  # pred (N, L, K), contiguous
    mask_ptr,  # mask (N, L), contiguous
    g_ptr,  # the loss's gradient, one element
    msum_ptr,  # Σ mask from the forward, one fp32 element
    dx_ptr,  # grad_imgs (N, C, H, W), contiguous: every pixel written once (when NEED_IMGS)
    dpred_ptr,  # grad_pred (N, L, K), contiguous (when NEED_PRED)
    M, L, GW, W, HW, CHW, K,
    P: tl.constexpr, C: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, NORM_PIX: tl.constexpr,
    EPS_: tl.constexpr, NEED_IMGS: tl.constexpr, NEED_PRED: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    o_r = i_b * BP + tl.arange(0, BP)  # [BP] patches
    o_k = tl.arange(0, BK)  # [BK] patch elements, image order
    m_r = o_r < M
    m_k = o_k < K
    m_rk = m_r[:, None] & m_k[None, :]
    o_img, o_pred = _patch_offsets(o_r, o_k, L, GW, W, HW, CHW, P, C)  # [BP, BK], [BP, BK]

    b_x = tl.load(x_ptr + o_img, mask=m_rk, other=0.0).to(tl.float32)  # [BP, BK]
    b_pred = tl.load(pred_ptr + o_pred, mask=m_rk, other=0.0).to(tl.float32)  # [BP, BK]
    b_m = tl.load(mask_ptr + o_r, mask=m_r, other=0.0).to(tl.float32)  # [BP]
    b_g = tl.load(g_ptr).to(tl.float32)
    b_msum = tl.load(msum_ptr).to(tl.float32)
    b_t, b_s = _target(b_x, m_k, K, BP, NORM_PIX, EPS_)
    b_coef = (2.0 * b_g / (b_msum * K)) * b_m  # [BP]
    b_dpred = b_coef[:, None] * tl.where(m_rk, b_pred - b_t, 0.0)  # [BP, BK]
    if NEED_PRED:
        tl.store(dpred_ptr + o_pred, b_dpred.to(dpred_ptr.dtype.element_ty), mask=m_rk)
    if NEED_IMGS:
        b_gt = -b_dpred  # [BP, BK] gradient of the target
        if NORM_PIX:
            b_gmean = tl.sum(b_gt, axis=1) / K  # [BP]
            b_gdot = tl.sum(b_gt * b_t, axis=1)  # [BP]
            b_dx = (b_gt - b_gmean[:, None]) / b_s[:, None] - b_t * (b_gdot / ((K - 1) * b_s))[:, None]
        else:
            b_dx = b_gt
        tl.store(dx_ptr + o_img, b_dx.to(dx_ptr.dtype.element_ty), mask=m_rk)


# ---------------------------------------------------------------------------------------------- launchers
def _geometry(imgs_shape, pred: torch.Tensor, mask: torch.Tensor, patch_size: int) -> dict:
    """Validate the shapes shared by both launchers; returns the kernels' size arguments."""
    if len(imgs_shape) != 4 or pred.dim() != 3 or mask.dim() != 2:
        raise ValueError(f"masked_mse_loss: expected imgs (N, C, H, W), pred (N, L, K), mask (N, L); got "
                         f"{tuple(imgs_shape)}, {tuple(pred.shape)}, {tuple(mask.shape)}")
    n, c, h, w = imgs_shape
    p = patch_size
    if p < 1 or h % p or w % p:
        raise ValueError(f"masked_mse_loss: image {h}x{w} is not a grid of {p}x{p} patches")
    gh, gw = h // p, w // p
    k = p * p * c
    if tuple(pred.shape) != (n, gh * gw, k) or tuple(mask.shape) != (n, gh * gw):
        raise ValueError(f"masked_mse_loss: imgs {tuple(imgs_shape)} with p={p} need pred ({n}, {gh * gw}, {k}) "
                         f"and mask ({n}, {gh * gw}); got {tuple(pred.shape)} and {tuple(mask.shape)}")
    if k > MAX_K:
        raise ValueError(f"masked_mse_loss: patches of {k} > {MAX_K} elements are not supported by the kernel")
    return dict(M=n * gh * gw, L=gh * gw, GW=gw, W=w, HW=h * w, CHW=c * h * w, K=k, P=p, C=c)


def _launch_settings(geo: dict) -> dict:
    """BP (patches per program), BK (padded patch) and the warps; see the module."""
    bk = _utils.next_pow2(geo["K"])
    bp = max(1, min(TILE_ELEMENTS // bk, _utils.next_pow2(geo["M"], minimum=1)))
    return dict(BP=bp, BK=bk, num_warps=8 if bp * bk >= 4096 else 4)


def masked_mse_loss_fwd(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int,
                        norm_pix: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, Σ mask), both fp32 scalars; see the module."""
    geo = _geometry(imgs.shape, pred, mask, patch_size)
    imgs, pred, mask = imgs.contiguous(), pred.contiguous(), mask.contiguous()
    settings = _launch_settings(geo)
    n_programs = max(1, triton.cdiv(geo["M"], settings["BP"]))
    partials = _utils.empty((2, n_programs), device=imgs.device, dtype=torch.float32)
    if geo["M"] == 0:
        partials.zero_()
    else:
        _masked_mse_loss_fwd_kernel[(n_programs,)](
            imgs, pred, mask, partials, **geo, N_PROGRAMS=n_programs, NORM_PIX=norm_pix, EPS_=EPS, **settings,
        )
    sums = partials.sum(1)  # [Σ mask·loss, Σ mask]
    return sums[0] / sums[1], sums[1].clone()


def masked_mse_loss_bwd(grad_loss: torch.Tensor, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                        mask_sum: torch.Tensor, patch_size: int, norm_pix: bool, need_imgs: bool,
                        need_pred: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_imgs in imgs.dtype, grad_pred in pred.dtype); a gradient not asked for is an empty (0,) tensor."""
    geo = _geometry(imgs.shape, pred, mask, patch_size)
    imgs, pred, mask = imgs.contiguous(), pred.contiguous(), mask.contiguous()
    device = imgs.device
    dx = (_utils.empty(imgs.shape, device=device, dtype=imgs.dtype) if need_imgs
          else torch.empty(0, device=device, dtype=imgs.dtype))
    dpred = (_utils.empty(pred.shape, device=device, dtype=pred.dtype) if need_pred
             else torch.empty(0, device=device, dtype=pred.dtype))
    if geo["M"] and (need_imgs or need_pred):
        settings = _launch_settings(geo)
        _masked_mse_loss_bwd_kernel[(triton.cdiv(geo["M"], settings["BP"]),)](
            imgs, pred, mask, grad_loss.reshape(1).contiguous(), mask_sum.reshape(1).to(torch.float32), dx, dpred,
            **geo, NORM_PIX=norm_pix, EPS_=EPS, NEED_IMGS=need_imgs, NEED_PRED=need_pred, **settings,
        )
    return dx, dpred
