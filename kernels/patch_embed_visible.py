"""MAE patch embedding of the visible patches only, fused with the positional embedding and the gather.

Shapes: imgs (N, C, H, W) with H = W = G·P; weight (D, C, P, P), seen as W = (D, K) with K = C·P·P; bias (D,);
pos_embed (L, D) with L = G·G; ids_keep (N, L_keep) int64; M = N·L_keep kept rows r = (n, j), l = ids_keep[n, j].

Forward (``_patch_embed_visible_fwd_kernel``), one program per [BM rows, BN columns of D] tile:

    y[r, :] = patch(imgs[n], l) @ Wᵀ + bias + pos_embed[l]

``patch`` is gathered straight from the NCHW image by pointer arithmetic (im2col without a buffer), in the conv
weight's (c, i, j) order: element k is pixel (c, gh·P + i, gw·P + j) with c = k // P², i = (k // P) % P, j = k % P,
gh = l // G, gw = l % G. The K loop runs in BK steps with masks (K = 12, 48, 192, 768 for C = 3, P = 2..16), the
dot accumulates in fp32, the epilogue adds bias and pos_embed[l] and rounds once to the output dtype. Only the
kept patches are read: the masked 75% of the patch embedding and the (N, L, D) intermediate never exist.

Backward, with dy = grad_out (M, D) already in the conv dtype (as autograd casts it):

- ``_patch_embed_visible_bwd_dx_kernel``: dpatch = dy @ W for the kept rows, [BM rows, BK columns of K] tiles,
  fp32 accumulation over D, stored straight into the image layout of dimgs (the same addresses the forward
  reads). ``_patch_embed_visible_bwd_zero_kernel`` writes exact zeros to every pixel of the other patches: one
  program per (image, patch), which returns at once when the patch is kept (a per-patch flag built by a
  scatter, no host sync) and otherwise stores the [C·P rows, P pixels] patch. Together they write every element
  of dimgs exactly once. ids_keep must hold distinct patches per sample (MAE's argsort prefix always does); a
  repeated index would be written twice instead of summed.
- ``_patch_embed_visible_bwd_dw_kernel``: dW = dyᵀ @ patches, [BD, BK] tiles, fp32 accumulation over the rows,
  which are re-gathered from imgs on the fly. The rows are split into SPLIT contiguous ranges so that small
  outputs (CIFAR: D × 12) still fill the GPU; each program writes its fp32 partial, the launcher sums them
  (deterministic, no atomics).

ids_keep must lie in [0, L): with ``TRITON_DEBUG=1`` the kernels check it with device-side asserts (without it, an
out-of-range index reads and writes out of bounds silently).

Dot operands stay in the input dtype on the GPU (tensor cores). fp32 inputs use TF32 exactly when
``torch.backends.cudnn.allow_tf32`` is set, i.e. when ``F.conv2d``, the reference, would; IEEE fp32 otherwise.
Under Triton's CPU interpreter the operands are upcast to fp32 first (its bf16 matmul is wrong).

Block sizes are fixed heuristics (no autotune, so the interpreter needs no special path), not yet tuned on a
GPU: BM = 64 rows, BN ≤ 128 columns, BK ≤ 64 (≤ 32 for fp32) of the reduction, 4 warps (8 for 64 × 128 tiles),
3 pipeline stages; the weight-gradient split targets two programs per SM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _utils

BLOCK_M = 64
"""Rows (kept patches) per tile in every GEMM kernel."""
BLOCK_N_MAX = 128
"""Largest tile of output columns (D in the forward and the weight gradient's rows)."""
BLOCK_K_MAX = {2: 64, 4: 32}
"""Largest reduction step by element size: 64 for fp16/bf16, 32 for fp32 (shared memory of 3 stages)."""
NUM_STAGES = 3


@triton.jit
def _patch_rows(o_m, ids_ptr, m_m, L_KEEP, CHW, G, P: tl.constexpr):
    """Offset of each kept row's patch origin (c = 0, i = 0, j = 0) in imgs, and its patch index l."""
    b_l = tl.load(ids_ptr + o_m, mask=m_m, other=0).to(tl.int64)  # [BM]
    tl.device_assert((b_l >= 0) & (b_l < G * G), "patch_embed_visible: ids_keep out of range [0, L)")
    o_n = o_m // L_KEEP  # [BM] sample
    o_base = o_n * CHW + (b_l // G) * (P * P * G) + (b_l % G) * P  # [BM] gh·P rows of W = G·P pixels
    return o_base, b_l


@triton.jit
def _patch_cols(o_k, HW, G, P: tl.constexpr):
    """Offset of patch element k = (c, i, j) from the patch origin."""
    return (o_k // (P * P)) * HW + ((o_k // P) % P) * (G * P) + o_k % P  # [BK]


@triton.jit
def _patch_embed_visible_fwd_kernel(
    x_ptr,  # imgs (N, C, H, W), contiguous
    w_ptr,  # weight (D, K), contiguous
    b_ptr,  # bias (D,)
    pos_ptr,  # pos_embed (L, D), contiguous
    ids_ptr,  # ids_keep (M,) int64
    y_ptr,  # out (M, D), contiguous
    M, L_KEEP, D, K, G, HW, CHW,
    P: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    i_m = tl.program_id(0).to(tl.int64)
    i_n = tl.program_id(1).to(tl.int64)
    o_m = i_m * BM + tl.arange(0, BM)  # [BM] rows
    o_d = i_n * BN + tl.arange(0, BN)  # [BN] output columns
    m_m = o_m < M
    m_d = o_d < D
    o_base, b_l = _patch_rows(o_m, ids_ptr, m_m, L_KEEP, CHW, G, P)  # [BM], [BM]

    b_acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)  # [BK]
        m_k = o_k < K
        p_x = x_ptr + o_base[:, None] + _patch_cols(o_k, HW, G, P)[None, :]  # [BM, BK] im2col gather
        b_x = tl.load(p_x, mask=m_m[:, None] & m_k[None, :], other=0.0)  # [BM, BK]
        p_w = w_ptr + o_d[None, :] * K + o_k[:, None]  # [BK, BN] = Wᵀ tile
        b_w = tl.load(p_w, mask=m_k[:, None] & m_d[None, :], other=0.0)  # [BK, BN]
        if DOT_FP32:
            b_x = b_x.to(tl.float32)
            b_w = b_w.to(tl.float32)
        b_acc = tl.dot(b_x, b_w, b_acc, input_precision=INPUT_PRECISION)  # [BM, BK] @ [BK, BN] -> [BM, BN]

    b_bias = tl.load(b_ptr + o_d, mask=m_d, other=0.0).to(tl.float32)  # [BN]
    m_out = m_m[:, None] & m_d[None, :]
    b_pos = tl.load(pos_ptr + b_l[:, None] * D + o_d[None, :], mask=m_out, other=0.0).to(tl.float32)  # [BM, BN]
    b_y = b_acc + b_bias[None, :] + b_pos
    tl.store(y_ptr + o_m[:, None] * D + o_d[None, :], b_y.to(y_ptr.dtype.element_ty), mask=m_out)


@triton.jit
def _patch_embed_visible_bwd_dx_kernel(
    dy_ptr,  # grad_out (M, D), contiguous, in the conv dtype
    w_ptr,  # weight (D, K), contiguous
    ids_ptr,  # ids_keep (M,) int64
    dx_ptr,  # dimgs (N, C, H, W), contiguous: the kept patches are written here
    M, L_KEEP, D, K, G, HW, CHW,
    P: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    i_m = tl.program_id(0).to(tl.int64)
    i_k = tl.program_id(1).to(tl.int64)
    o_m = i_m * BM + tl.arange(0, BM)  # [BM] rows
    o_k = i_k * BK + tl.arange(0, BK)  # [BK] patch elements
    m_m = o_m < M
    m_k = o_k < K

    b_acc = tl.zeros([BM, BK], dtype=tl.float32)
    for d0 in range(0, D, BD):
        o_d = d0 + tl.arange(0, BD)  # [BD]
        m_d = o_d < D
        b_dy = tl.load(dy_ptr + o_m[:, None] * D + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)
        b_w = tl.load(w_ptr + o_d[:, None] * K + o_k[None, :], mask=m_d[:, None] & m_k[None, :], other=0.0)
        if DOT_FP32:
            b_dy = b_dy.to(tl.float32)
            b_w = b_w.to(tl.float32)
        b_acc = tl.dot(b_dy, b_w, b_acc, input_precision=INPUT_PRECISION)  # [BM, BD] @ [BD, BK] -> [BM, BK]

    o_base, _ = _patch_rows(o_m, ids_ptr, m_m, L_KEEP, CHW, G, P)  # [BM]
    p_dx = dx_ptr + o_base[:, None] + _patch_cols(o_k, HW, G, P)[None, :]  # [BM, BK] scatter into the image
    tl.store(p_dx, b_acc.to(dx_ptr.dtype.element_ty), mask=m_m[:, None] & m_k[None, :])


@triton.jit
def _patch_embed_visible_bwd_zero_kernel(
    kept_ptr,  # kept (N, L) int8: 1 where the patch is in ids_keep
    dx_ptr,  # dimgs (N, C, H, W), contiguous: the other patches are zeroed here
    L, G, HW, CHW,
    P: tl.constexpr, C: tl.constexpr, BR: tl.constexpr, BJ: tl.constexpr,
):
    i_nl = tl.program_id(0).to(tl.int64)  # (image n, patch l)
    if tl.load(kept_ptr + i_nl) != 0:
        return  # the dx kernel writes this patch
    i_n = i_nl // L
    i_l = i_nl % L
    o_base = i_n * CHW + (i_l // G) * (P * G * P) + (i_l % G) * P  # patch origin (c = 0, i = 0, j = 0)
    o_r = tl.arange(0, BR)  # [BR] patch rows c·P + i
    o_j = tl.arange(0, BJ)  # [BJ] pixels of a row, contiguous
    p_dx = dx_ptr + o_base + ((o_r // P) * HW + (o_r % P) * (G * P))[:, None] + o_j[None, :]  # [BR, BJ]
    m_rj = (o_r < C * P)[:, None] & (o_j < P)[None, :]
    tl.store(p_dx, tl.zeros([BR, BJ], dtype=dx_ptr.dtype.element_ty), mask=m_rj)


@triton.jit
def _patch_embed_visible_bwd_dw_kernel(
    dy_ptr,  # grad_out (M, D), contiguous, in the conv dtype
    x_ptr,  # imgs (N, C, H, W), contiguous
    ids_ptr,  # ids_keep (M,) int64
    dw_ptr,  # partial weight gradients (SPLIT, D, K) fp32
    M, L_KEEP, D, K, G, HW, CHW, ROWS_PER_SPLIT,
    P: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    i_d = tl.program_id(0).to(tl.int64)
    i_k = tl.program_id(1).to(tl.int64)
    i_s = tl.program_id(2).to(tl.int64)
    o_d = i_d * BD + tl.arange(0, BD)  # [BD]
    o_k = i_k * BK + tl.arange(0, BK)  # [BK]
    m_d = o_d < D
    m_k = o_k < K
    o_cols = _patch_cols(o_k, HW, G, P)  # [BK]

    b_acc = tl.zeros([BD, BK], dtype=tl.float32)
    r_end = tl.minimum((i_s + 1) * ROWS_PER_SPLIT, M)
    for r0 in range(i_s * ROWS_PER_SPLIT, r_end, BM):
        o_m = r0 + tl.arange(0, BM)  # [BM]
        m_m = o_m < r_end
        b_dyt = tl.load(dy_ptr + o_m[None, :] * D + o_d[:, None], mask=m_d[:, None] & m_m[None, :], other=0.0)
        o_base, _ = _patch_rows(o_m, ids_ptr, m_m, L_KEEP, CHW, G, P)  # [BM]
        b_x = tl.load(x_ptr + o_base[:, None] + o_cols[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        if DOT_FP32:
            b_dyt = b_dyt.to(tl.float32)
            b_x = b_x.to(tl.float32)
        b_acc = tl.dot(b_dyt, b_x, b_acc, input_precision=INPUT_PRECISION)  # [BD, BM] @ [BM, BK] -> [BD, BK]

    p_dw = dw_ptr + i_s * D * K + o_d[:, None] * K + o_k[None, :]  # [BD, BK]
    tl.store(p_dw, b_acc, mask=m_d[:, None] & m_k[None, :])


# ---------------------------------------------------------------------------------------------- launchers
def _dot_settings(dtype: torch.dtype, device: torch.device) -> dict:
    """DOT_FP32 (upcast operands: the interpreter) and the fp32 input precision F.conv2d would use."""
    precision = None
    if dtype == torch.float32:
        precision = "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "ieee"
    return dict(DOT_FP32=device.type != "cuda", INPUT_PRECISION=precision)


def _block(n: int, cap: int) -> int:
    return min(cap, _utils.next_pow2(n))


def _geometry(imgs: torch.Tensor, weight: torch.Tensor, ids_keep: torch.Tensor) -> dict:
    """Validate the shapes shared by every launcher; returns the kernel's size arguments."""
    if imgs.dim() != 4 or weight.dim() != 4 or ids_keep.dim() != 2:
        raise ValueError(
            f"patch_embed_visible: expected imgs (N, C, H, W), weight (D, C, p, p), ids_keep (N, L_keep); got "
            f"{tuple(imgs.shape)}, {tuple(weight.shape)}, {tuple(ids_keep.shape)}"
        )
    n, c, h, w = imgs.shape
    d, wc, p, p2 = weight.shape
    if p != p2 or wc != c or h != w or h % p:
        raise ValueError(
            f"patch_embed_visible: imgs {tuple(imgs.shape)} and weight {tuple(weight.shape)} need square p × p "
            f"patches, matching channels and a square image with a side divisible by p"
        )
    if ids_keep.shape[0] != n or ids_keep.dtype != torch.int64:
        raise ValueError(f"patch_embed_visible: ids_keep must be int64 (N={n}, L_keep), got "
                         f"{ids_keep.dtype} {tuple(ids_keep.shape)}")
    g = h // p
    return dict(M=n * ids_keep.shape[1], L_KEEP=ids_keep.shape[1], D=d, K=c * p * p, G=g, HW=h * w, CHW=c * h * w,
                P=p)


def patch_embed_visible_fwd(imgs, weight, bias, pos_embed, ids_keep) -> torch.Tensor:
    """Visible-patch tokens (N, L_keep, D) in ``promote_types(imgs.dtype, pos_embed.dtype)``; see the module."""
    geo = _geometry(imgs, weight, ids_keep)
    n, l_keep, d = imgs.shape[0], ids_keep.shape[1], weight.shape[0]
    if bias.shape != (d,) or pos_embed.shape != (geo["G"] ** 2, d):
        raise ValueError(f"patch_embed_visible: bias must be ({d},) and pos_embed ({geo['G'] ** 2}, {d}); got "
                         f"{tuple(bias.shape)}, {tuple(pos_embed.shape)}")
    imgs, weight, bias = imgs.contiguous(), weight.contiguous(), bias.contiguous()
    pos_embed, ids_keep = pos_embed.contiguous(), ids_keep.contiguous()
    out_dtype = torch.promote_types(imgs.dtype, pos_embed.dtype)
    y = _utils.empty((n, l_keep, d), device=imgs.device, dtype=out_dtype)
    if y.numel() == 0:
        return y
    bn = _block(d, BLOCK_N_MAX)
    bk = _block(geo["K"], BLOCK_K_MAX[min(imgs.element_size(), 4)])
    grid = (triton.cdiv(geo["M"], BLOCK_M), triton.cdiv(d, bn))
    with _utils.device_guard(imgs):
        # Occupancy 0.12 only with TF32 off (IEEE dots: 158-210 registers), where independent FMAs hide latency.
        _patch_embed_visible_fwd_kernel[grid](
            imgs, weight, bias, pos_embed, ids_keep, y, **geo, BM=BLOCK_M, BN=bn, BK=bk,
            **_dot_settings(imgs.dtype, imgs.device),
            num_warps=8 if BLOCK_M * bn >= 64 * 128 else 4,
            num_stages=2 if imgs.dtype == torch.float32 else NUM_STAGES,  # 3 stages spill 20 B in fp32 (sm_90)
        )
    return y


def patch_embed_visible_bwd_imgs(grad_out, weight, ids_keep, imgs_shape) -> torch.Tensor:
    """d imgs (N, C, H, W) in ``weight.dtype``: dy @ W scattered into the kept patches, zeros elsewhere."""
    meta = torch.empty(imgs_shape, device="meta")
    geo = _geometry(meta, weight, ids_keep)
    grad_out, weight, ids_keep = grad_out.contiguous(), weight.contiguous(), ids_keep.contiguous()
    n, length = imgs_shape[0], geo["G"] ** 2
    dx = _utils.empty(imgs_shape, device=weight.device, dtype=weight.dtype)
    if dx.numel() == 0:
        return dx
    kept = torch.zeros(n, length, device=weight.device, dtype=torch.int8)
    kept.scatter_(1, ids_keep, 1)
    p, c = geo["P"], imgs_shape[1]
    br, bj = _utils.next_pow2(c * p, minimum=1), _utils.next_pow2(p, minimum=1)
    with _utils.device_guard(weight):
        _patch_embed_visible_bwd_zero_kernel[(n * length,)](
            kept, dx, length, geo["G"], geo["HW"], geo["CHW"], P=p, C=c, BR=br, BJ=bj,
            num_warps=max(1, min(4, br * bj // 256)),
        )
        if geo["M"] == 0:
            return dx
        bk = _block(geo["K"], BLOCK_N_MAX)
        bd = _block(geo["D"], BLOCK_K_MAX[min(weight.element_size(), 4)])
        grid = (triton.cdiv(geo["M"], BLOCK_M), triton.cdiv(geo["K"], bk))
        _patch_embed_visible_bwd_dx_kernel[grid](
            grad_out, weight, ids_keep, dx, **geo, BM=BLOCK_M, BK=bk, BD=bd,
            **_dot_settings(weight.dtype, weight.device),
            num_warps=8 if BLOCK_M * bk >= 64 * 128 else 4, num_stages=NUM_STAGES,
        )
    return dx


def patch_embed_visible_bwd_weight(grad_out, imgs, ids_keep, weight_shape) -> torch.Tensor:
    """d weight (D, C, p, p) in ``imgs.dtype``: Σ over kept rows of dyᵀ · patch, re-gathered from imgs."""
    geo = _geometry(imgs, torch.empty(weight_shape, device="meta"), ids_keep)
    grad_out, imgs, ids_keep = grad_out.contiguous(), imgs.contiguous(), ids_keep.contiguous()
    d, k, m = geo["D"], geo["K"], geo["M"]
    bd = _block(d, 64)
    bk = _block(k, 64)
    tiles = triton.cdiv(d, bd) * triton.cdiv(k, bk)
    row_tiles = max(1, triton.cdiv(m, BLOCK_M))
    split = max(1, min(row_tiles, triton.cdiv(2 * _utils.num_sms(imgs.device), tiles)))
    rows_per_split = triton.cdiv(row_tiles, split) * BLOCK_M
    split = max(1, triton.cdiv(m, rows_per_split))  # no empty ranges
    partial = _utils.empty((split, d, k), device=imgs.device, dtype=torch.float32)
    with _utils.device_guard(imgs):
        _patch_embed_visible_bwd_dw_kernel[(triton.cdiv(d, bd), triton.cdiv(k, bk), split)](
            grad_out, imgs, ids_keep, partial, **geo, ROWS_PER_SPLIT=rows_per_split, BM=BLOCK_M, BD=bd, BK=bk,
            # fp32: 8 warps (IEEE dots spill at 4 for p = 16); occupancy 0.12 on Triton 3.6 with TF32 off, as fwd
            **_dot_settings(imgs.dtype, imgs.device), num_warps=8 if imgs.dtype == torch.float32 else 4,
            num_stages=NUM_STAGES,
        )
    dw = partial[0] if split == 1 else partial.sum(0)
    return dw.to(imgs.dtype).reshape(weight_shape)
