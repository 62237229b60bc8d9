"""MAE's reconstruction loss, fused: per-patch (normalised) targets read straight from the image, squared error,
per-patch mean, mask-weighted mean over the patches.

Shapes: imgs (N, C, H, W) with H = Gh·p, W = Gw·p; pred (N, L, K) with L = Gh·Gw and K = p·p·C in patchify's
(row i, column j, channel c) order, element k = (i·p + j)·C + c, read through its strides (the model's pred is
the view ``x[:, 1:, :]``; only the last dimension must be dense); mask (N, L) float weights. Rows r = n·L + l,
M = N·L of them; patch l sits at grid cell (gh, gw) = (l // Gw, l % Gw).

Forward (``_masked_mse_loss_fwd_kernel``), one program per block of BP patches, each patch a [BC, BPP] tile
(channels × pixels i·p + j, padded to powers of two):

    t      = x                                   or, with norm_pix,   (x − μ) / s,
    μ      = Σ_k x_k / K,   s = sqrt(Σ_k (x_k − μ)² / (K − 1) + 1e-6)      (unbiased variance, MAE's)
    loss_r = Σ_k (pred_rk − t_rk)² / K
    out    = Σ_r mask_r · loss_r / Σ_r mask_r

Both sides are read in their own memory order, so that consecutive lanes read consecutive addresses: the image
as [BP, BC, BPP] (runs of p pixels, straight from NCHW by pointer arithmetic: no patchified copy), pred as
[BP, BPP, BC] (its K elements in (i, j, c) order). ``tl.permute`` turns the pred tile into the image's
[BP, BC, BPP] in registers (through shared memory); the backward permutes grad_pred back before its store.
Everything is computed in fp32 (μ and the variance in two passes over the registers). Each program writes its
partial Σ mask·loss and Σ mask; the launcher sums the partials with torch (deterministic, no atomics, no host
sync). The result and Σ mask are fp32 scalars.

Backward (``_masked_mse_loss_bwd_kernel``), the same blocks, g = the loss's gradient, S = Σ mask (both read from
device memory):

    grad_pred_rk = 2 (pred_rk − t_rk) / K · mask_r / S · g
    g_t          = −grad_pred                                     (kept in fp32, not rounded)
    grad_x       = g_t                                            without norm_pix, else
    grad_x       = (g_t − mean(g_t)) / s − t · Σ_k(g_t,k t_k) / ((K − 1) s)

(from ∂μ/∂x_j = 1/K and ∂s/∂x_j = t_j / ((K − 1) s)). Every pixel belongs to exactly one patch, so every element
of grad_imgs is written once (patches with zero weight get exact zeros). Each of the two gradients is computed
only when asked for (NEED_* flags).

Limits: K ≤ MAX_K = 8192 (one patch per program; p ≤ 52 for C = 3), so a padded patch BC·BPP holds at most
16 384 elements; M < 2³¹ rows (one grid dimension of ⌈M / BP⌉ programs). K = 1 with norm_pix divides by zero,
as the reference's unbiased variance does. Block sizes are fixed heuristics (no autotune, so the interpreter
needs no special path), not tuned on a GPU: BC, BPP = next powers of two ≥ C, p², BP·BC·BPP ≤ 2048 elements
per tile unless one patch is larger, 4 warps (8 for tiles of 2048 elements and more).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _utils

MAX_K = 8192
"""Largest patch (p·p·C elements) one program holds."""
TILE_ELEMENTS = 2048
"""Patches × padded patch elements of one tile (BP · BC · BPP) when the patch is small."""
EPS = 1e-6
"""MAE's norm_pix_loss epsilon, added to the unbiased variance."""


@triton.jit
def _patch_offsets(o_r, L, GW, W, HW, CHW, SPN, SPL, P: tl.constexpr, C: tl.constexpr, BC: tl.constexpr,
                   BPP: tl.constexpr):
    """Rows ``o_r`` [BP]: image offsets [BP, BC, BPP] in image order (c, i·P + j) and pred offsets
    [BP, BPP, BC] in pred order (i·P + j, c), with their masks (patch lanes, not rows)."""
    o_c = tl.arange(0, BC)
    o_pp = tl.arange(0, BPP)  # i·P + j
    o_n = o_r // L
    o_l = o_r % L
    o_base = o_n * CHW + (o_l // GW) * (P * W) + (o_l % GW) * P  # [BP] patch origin in imgs
    o_img = o_base[:, None, None] + (o_c * HW)[None, :, None] + ((o_pp // P) * W + o_pp % P)[None, None, :]
    o_pred = (o_n * SPN + o_l * SPL)[:, None, None] + (o_pp * C)[None, :, None] + o_c[None, None, :]
    m_img = (o_c < C)[None, :, None] & (o_pp < P * P)[None, None, :]  # [1, BC, BPP]
    m_pred = (o_pp < P * P)[None, :, None] & (o_c < C)[None, None, :]  # [1, BPP, BC]
    return o_img, o_pred, m_img, m_pred


@triton.jit
def _rowsum(a):
    """[BP, BC, BPP] -> [BP]."""
    return tl.sum(tl.sum(a, axis=2), axis=1)


@triton.jit
def _target(b_x, m_img, K, BP: tl.constexpr, NORM_PIX: tl.constexpr, EPS_: tl.constexpr):
    """The target rows t [BP, BC, BPP] (zero on padding lanes) and their scale s [BP] (1 without norm_pix)."""
    if NORM_PIX:
        b_mean = _rowsum(b_x) / K  # [BP]
        b_xc = tl.where(m_img, b_x - b_mean[:, None, None], 0.0)  # [BP, BC, BPP]
        b_var = _rowsum(b_xc * b_xc) / (K - 1)  # [BP] unbiased
        b_s = tl.sqrt(b_var + EPS_)  # [BP]
        b_t = b_xc / b_s[:, None, None]
    else:
        b_s = tl.full([BP], 1.0, tl.float32)
        b_t = b_x
    return b_t, b_s


@triton.jit
def _masked_mse_loss_fwd_kernel(
    x_ptr,  # imgs (N, C, H, W), contiguous
    pred_ptr,  # pred (N, L, K), strides (SPN, SPL, 1)
    mask_ptr,  # mask (N, L), contiguous
    part_ptr,  # partials (2, n_programs) fp32: Σ mask·loss, then Σ mask
    M, L, GW, W, HW, CHW, K, SPN, SPL, N_PROGRAMS,
    P: tl.constexpr, C: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr, BPP: tl.constexpr,
    NORM_PIX: tl.constexpr, EPS_: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    o_r = i_b * BP + tl.arange(0, BP)  # [BP] patches
    m_r = o_r < M
    o_img, o_pred, m_img, m_pred = _patch_offsets(o_r, L, GW, W, HW, CHW, SPN, SPL, P, C, BC, BPP)
    m_img = m_r[:, None, None] & m_img  # [BP, BC, BPP]

    b_x = tl.load(x_ptr + o_img, mask=m_img, other=0.0).to(tl.float32)  # [BP, BC, BPP]
    b_pred = tl.load(pred_ptr + o_pred, mask=m_r[:, None, None] & m_pred, other=0.0).to(tl.float32)
    b_pred = tl.permute(b_pred, (0, 2, 1))  # [BP, BPP, BC] -> [BP, BC, BPP], in registers
    b_m = tl.load(mask_ptr + o_r, mask=m_r, other=0.0).to(tl.float32)  # [BP]
    b_t, _ = _target(b_x, m_img, K, BP, NORM_PIX, EPS_)
    b_d = tl.where(m_img, b_pred - b_t, 0.0)  # [BP, BC, BPP]
    b_loss = _rowsum(b_d * b_d) / K  # [BP] per-patch mean squared error
    tl.store(part_ptr + i_b, tl.sum(b_loss * b_m, axis=0))
    tl.store(part_ptr + N_PROGRAMS + i_b, tl.sum(b_m, axis=0))


@triton.jit
def _masked_mse_loss_bwd_kernel(
    x_ptr,  # imgs (N, C, H, W), contiguous
    pred_ptr,  # pred (N, L, K), strides (SPN, SPL, 1)
    mask_ptr,  # mask (N, L), contiguous
    g_ptr,  # the loss's gradient, one element
    msum_ptr,  # Σ mask from the forward, one fp32 element
    dx_ptr,  # grad_imgs (N, C, H, W), contiguous: every pixel written once (when NEED_IMGS)
    dpred_ptr,  # grad_pred (N, L, K), contiguous (when NEED_PRED)
    M, L, GW, W, HW, CHW, K, SPN, SPL,
    P: tl.constexpr, C: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr, BPP: tl.constexpr,
    NORM_PIX: tl.constexpr, EPS_: tl.constexpr, NEED_IMGS: tl.constexpr, NEED_PRED: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    o_r = i_b * BP + tl.arange(0, BP)  # [BP] patches
    m_r = o_r < M
    o_img, o_pred, m_img, m_pred = _patch_offsets(o_r, L, GW, W, HW, CHW, SPN, SPL, P, C, BC, BPP)
    m_img = m_r[:, None, None] & m_img  # [BP, BC, BPP]
    m_pred = m_r[:, None, None] & m_pred  # [BP, BPP, BC]

    b_x = tl.load(x_ptr + o_img, mask=m_img, other=0.0).to(tl.float32)  # [BP, BC, BPP]
    b_pred = tl.load(pred_ptr + o_pred, mask=m_pred, other=0.0).to(tl.float32)  # [BP, BPP, BC]
    b_pred = tl.permute(b_pred, (0, 2, 1))  # [BP, BC, BPP]
    b_m = tl.load(mask_ptr + o_r, mask=m_r, other=0.0).to(tl.float32)  # [BP]
    b_g = tl.load(g_ptr).to(tl.float32)
    b_msum = tl.load(msum_ptr).to(tl.float32)
    b_t, b_s = _target(b_x, m_img, K, BP, NORM_PIX, EPS_)
    b_coef = (2.0 * b_g / (b_msum * K)) * b_m  # [BP]
    b_dpred = b_coef[:, None, None] * tl.where(m_img, b_pred - b_t, 0.0)  # [BP, BC, BPP]
    if NEED_PRED:  # back to pred order [BP, BPP, BC], stored contiguously
        o_dpred = o_r[:, None, None] * K + (tl.arange(0, BPP) * C)[None, :, None] + tl.arange(0, BC)[None, None, :]
        tl.store(dpred_ptr + o_dpred, tl.permute(b_dpred, (0, 2, 1)).to(dpred_ptr.dtype.element_ty), mask=m_pred)
    if NEED_IMGS:
        b_gt = -b_dpred  # [BP, BC, BPP] gradient of the target
        if NORM_PIX:
            b_gmean = _rowsum(b_gt) / K  # [BP]
            b_gdot = _rowsum(b_gt * b_t)  # [BP]
            b_dx = (b_gt - b_gmean[:, None, None]) / b_s[:, None, None] \
                - b_t * (b_gdot / ((K - 1) * b_s))[:, None, None]
        else:
            b_dx = b_gt
        tl.store(dx_ptr + o_img, b_dx.to(dx_ptr.dtype.element_ty), mask=m_img)


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
    """BP (patches per program), BC × BPP (a padded patch: channels × pixels) and the warps; see the module."""
    bc, bpp = _utils.next_pow2(geo["C"], minimum=1), _utils.next_pow2(geo["P"] ** 2, minimum=1)
    bp = max(1, min(TILE_ELEMENTS // (bc * bpp), _utils.next_pow2(geo["M"], minimum=1)))
    # 8 warps from 2048 elements: at 4 the norm_pix backward of p = 2 patches needs 140 registers (occupancy 0.19)
    return dict(BP=bp, BC=bc, BPP=bpp, num_warps=8 if bp * bc * bpp >= 2048 else 4)


def _dense_rows(pred: torch.Tensor) -> torch.Tensor:
    """``pred`` itself when its last dimension is dense (e.g. the model's ``x[:, 1:, :]``), else a copy."""
    return pred if pred.stride(-1) == 1 or pred.shape[-1] == 1 else pred.contiguous()


def masked_mse_loss_fwd(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int,
                        norm_pix: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, Σ mask), both fp32 scalars; see the module. ``pred`` is read through its strides."""
    geo = _geometry(imgs.shape, pred, mask, patch_size)
    imgs, pred, mask = imgs.contiguous(), _dense_rows(pred), mask.contiguous()
    settings = _launch_settings(geo)
    n_programs = max(1, triton.cdiv(geo["M"], settings["BP"]))
    partials = _utils.empty((2, n_programs), device=imgs.device, dtype=torch.float32)
    if geo["M"] == 0:
        partials.zero_()
    else:
        with _utils.device_guard(imgs):
            _masked_mse_loss_fwd_kernel[(n_programs,)](
                imgs, pred, mask, partials, **geo, SPN=pred.stride(0), SPL=pred.stride(1), N_PROGRAMS=n_programs,
                NORM_PIX=norm_pix, EPS_=EPS, **settings,
            )
    sums = partials.sum(1)  # [Σ mask·loss, Σ mask]
    return sums[0] / sums[1], sums[1].clone()


def masked_mse_loss_bwd(grad_loss: torch.Tensor, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                        mask_sum: torch.Tensor, patch_size: int, norm_pix: bool, need_imgs: bool,
                        need_pred: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_imgs in imgs.dtype, grad_pred in pred.dtype, contiguous); a gradient not asked for is an empty (0,)
    tensor. ``pred`` is read through its strides."""
    geo = _geometry(imgs.shape, pred, mask, patch_size)
    imgs, pred, mask = imgs.contiguous(), _dense_rows(pred), mask.contiguous()
    device = imgs.device
    dx = (_utils.empty(imgs.shape, device=device, dtype=imgs.dtype) if need_imgs
          else torch.empty(0, device=device, dtype=imgs.dtype))
    dpred = (_utils.empty(pred.shape, device=device, dtype=pred.dtype) if need_pred
             else torch.empty(0, device=device, dtype=pred.dtype))
    if geo["M"] and (need_imgs or need_pred):
        settings = _launch_settings(geo)
        with _utils.device_guard(imgs):
            _masked_mse_loss_bwd_kernel[(triton.cdiv(geo["M"], settings["BP"]),)](
                imgs, pred, mask, grad_loss.reshape(1).contiguous(), mask_sum.reshape(1).to(torch.float32), dx,
                dpred, **geo, SPN=pred.stride(0), SPL=pred.stride(1), NORM_PIX=norm_pix, EPS_=EPS,
                NEED_IMGS=need_imgs, NEED_PRED=need_pred, **settings,
            )
    return dx, dpred
