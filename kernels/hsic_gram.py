"""HSIC's right-centered Gaussian kernel matrices of both variables, from one split-K Gram launch.

Shapes: x (m, dx), y (m, dy), each variable flattened per sample (dx = (1 + L_keep)·D latents, dy = 3·H·W pixels,
up to 150 528 columns); m ≤ MAX_M, dx, dy ≤ MAX_D. Outputs (2, m, m) float32: ``out[v] =
gaussian_kernel_centered(a_v, σ)``.

Forward:

1. ``_hsic_gram_fwd_kernel``: partial Gram matrices ``a_i·a_j`` over K-chunks (split-K). The grid is
   (lower-triangle tiles, SX + SY chunks): chunk s < SX covers columns [s·CHUNK, (s+1)·CHUNK) of x, the others
   those of y, so both variables share one launch and the work follows dx + dy. Only tiles with row tile ≥
   column tile are computed (modded-nanogpt's ``XXT``: half the GEMM). Each program writes its fp32 [BM, BM]
   partial into a (SX + SY, m, m) workspace; there are no atomics, the result is deterministic.
2. ``_hsic_gram_fwd_epilogue_kernel``: one program per [BR rows, all m columns] of one variable. It sums the
   partials in split order, reading element (i, j) at (max(i, j), min(i, j)), i.e. mirroring the lower
   triangle; the squared norms are the diagonal of the same sums. Then ``r = ‖a_i‖² + ‖a_j‖² − 2 a_i·a_j``
   (exactly symmetric, exactly 0 on the diagonal), ``e = expm1(−|r| / 2σ²d)`` and ``out = e − rowmean(e)``
   (the whole row is in the program). ``r`` is also stored: the backward recomputes e and sign(r) from it.

Backward, with G = dL/dout (2, m, m) and per variable (a = x or y, bw = 2σ²d):
``dL/de_ij = G_ij − mean_k G_ik =: Gc_ij``, ``W_ij = dL/dr_ij = −Gc_ij (1 + e_ij) sign(r_ij) / bw`` and, with
``S = W + Wᵀ``, ``dL/da = 2 (diag(S·1) − S) a``: a graph Laplacian times a.

3. ``_hsic_gram_bwd_rowmean_kernel``: mean_k G_ik for every row of both variables.
4. ``_hsic_gram_bwd_kernel``: ``lap = 2 (diag(S·1) − S)`` (2, m, m) fp32, rows in blocks with the full row.
5. ``_hsic_gram_bwd_gemm_kernel``: ``da = lap_v @ a_v``, [BM rows, BN columns of d] tiles, fp32 accumulation
   over m, tiles of x and y (only the variables that need a gradient) in one launch, all on grid dimension 0.

Precision: elementwise work is fp32 (inputs are upcast right after loading); every dot runs on tensor cores.
Gram dot operands stay in the input dtype: fp16/bf16 products are exact in fp32, so this matches the
reference's fp32 GEMM of the upcast inputs. fp32 operands follow torch's fp32 matmuls: under the default
float32 matmul precision "highest" the reference is IEEE fp32, and the kernel uses 3xTF32 (``tf32x3``: each
operand split into two TF32 parts, three products, about fp32's accuracy); under "high"/"medium" it uses TF32,
as torch does. The gradient GEMM multiplies the fp32 Laplacian by a: for fp32 a as above, for fp16/bf16 a
(exact in TF32) with one TF32 product, since the gradient is rounded to 16 bits anyway. Under Triton's CPU
interpreter every dot runs on fp32 operands in IEEE. float64 is not supported (the op runs its reference).
``expm1`` is computed here (``_expm1``): Triton has no portable expm1 (libdevice is GPU-only, the interpreter
lacks it), and ``tl.exp`` is the approximate ``ex2.approx`` on NVIDIA GPUs; ``_expm1`` uses neither.

Block sizes are fixed heuristics (no autotune, so the interpreter needs no special path), not yet tuned on a
GPU: Gram tiles BM = 64 (16..64 for small m), BK = 64 for 16-bit and 32 for fp32 operands, 4 warps, 3 stages;
the split count targets 4 programs per SM and a workspace of at most 16 MiB. Under the interpreter the
reduction steps are larger (BK = 256) and the split count targets 8 programs, to keep the tests fast.
Offsets into x, y and their gradients are 64-bit (m·d may pass 2³¹).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _utils

MAX_M = 1024
"""Largest sample count: the epilogue and backward hold whole rows of m elements in one program."""
MAX_D = 2**31 - 1
"""Largest width of a variable: the size arguments stay 32-bit integers, as in the variants that
bench/compile_check.py compiles (a larger one would specialise an unchecked 64-bit variant)."""
BLOCK_M_MAX = 64
"""Rows and columns of a Gram tile, and rows of a gradient tile."""
BLOCK_N = 64
"""Columns (of d) of a gradient tile on the GPU."""
ROW_ELEMS = 2048
"""Elements per program in the row-wise kernels: BR rows × next_pow2(m) columns."""
WORKSPACE_MAX = 1 << 22
"""Largest split-K workspace in fp32 elements (16 MiB)."""
PROGRAMS_PER_SM = 4
"""Split-K target: Gram programs per SM (2 "SMs" under the interpreter)."""
INTERPRETER_BK = 256
"""Reduction step of the Gram kernel and column tile of the gradient GEMM under the CPU interpreter."""
NUM_STAGES = 3


@triton.jit
def _expm1(z):
    """expm1 of fp32 z ≤ 0 within 2 ulp (tests/ops/test_hsic_gram.py), without the hardware exp.

    Cody–Waite reduction z = k ln2 + f with |f| ≤ ln2/2, then expm1(z) = 2^k expm1(f) + (2^k − 1): expm1(f)
    is a degree-8 Taylor polynomial (truncation < 1e-9 relative), 2^k is built from its exponent bits, and
    2^k − 1 is exact for k ≥ −24 (beyond, the result is −1 within rounding anyway). For k = 0 (|z| < 0.35)
    the result is the polynomial itself, so no digit is lost to the subtraction of 1. Below −87 the result
    is −1 (e^z < 2^-125); NaN propagates.
    """
    zc = tl.where(z < -87.0, -87.0, z)
    k = tl.floor(zc * 1.4426950408889634 + 0.5)  # round(z / ln2)
    k = tl.where(k == k, k, 0.0)  # NaN z: a valid k, f stays NaN
    f = (zc - k * 0.693145751953125) - k * 1.4286068202862268e-06  # ln2 = hi + lo, k·hi exact
    p = 2.48015873015873e-05  # 1/8!
    p = p * f + 0.0001984126984126984  # 1/7!
    p = p * f + 0.001388888888888889  # 1/6!
    p = p * f + 0.008333333333333333  # 1/5!
    p = p * f + 0.041666666666666664  # 1/4!
    p = p * f + 0.16666666666666666  # 1/3!
    p = p * f + 0.5
    p = (p * f + 1.0) * f  # expm1(f)
    two_k = ((k.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)  # 2^k, k in [-126, 0]
    return two_k * p + (two_k - 1.0)


@triton.jit
def _tile_coords(i_t):
    """Lower-triangle tile index t = r(r+1)/2 + c -> (row tile r, column tile c ≤ r)."""
    i_r = ((tl.sqrt((8 * i_t + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int64)
    i_r = tl.where(i_r * (i_r + 1) // 2 > i_t, i_r - 1, i_r)  # sqrt rounding, either way
    i_r = tl.where((i_r + 1) * (i_r + 2) // 2 <= i_t, i_r + 1, i_r)
    return i_r, i_t - i_r * (i_r + 1) // 2


@triton.jit
def _gram_partial(a_ptr, ws_ptr, M, K, k_lo, k_hi, i_r, i_c, i_s,
                  BM: tl.constexpr, BK: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """ws[i_s, tile (i_r, i_c)] = a[rows] @ a[cols]ᵀ over the columns [k_lo, k_hi) of a (M, K)."""
    o_r = i_r * BM + tl.arange(0, BM)  # [BM]
    o_c = i_c * BM + tl.arange(0, BM)  # [BM]
    m_r = o_r < M
    m_c = o_c < M
    b_acc = tl.zeros([BM, BM], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BK):  # k_lo is int64: so are the column offsets
        o_k = k0 + tl.arange(0, BK)  # [BK]
        m_k = o_k < k_hi
        b_a = tl.load(a_ptr + o_r[:, None] * K + o_k[None, :], mask=m_r[:, None] & m_k[None, :], other=0.0)
        b_bt = tl.load(a_ptr + o_c[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_c[None, :], other=0.0)
        if DOT_FP32:
            b_a = b_a.to(tl.float32)
            b_bt = b_bt.to(tl.float32)
        b_acc = tl.dot(b_a, b_bt, b_acc, input_precision=PRECISION)  # [BM, BK] @ [BK, BM] -> [BM, BM]
    p_ws = ws_ptr + i_s * M * M + o_r[:, None] * M + o_c[None, :]
    tl.store(p_ws, b_acc, mask=m_r[:, None] & m_c[None, :])


@triton.jit
def _hsic_gram_fwd_kernel(
    x_ptr,  # x (M, DX), contiguous, fp32/fp16/bf16
    y_ptr,  # y (M, DY), contiguous, fp32/fp16/bf16
    ws_ptr,  # partial Gram matrices (SX + SY, M, M) fp32; only lower-triangle tiles are written
    M, DX, DY, SX, CHUNK,
    BM: tl.constexpr, BK: tl.constexpr, DOT_FP32: tl.constexpr,
    PRECISION_X: tl.constexpr, PRECISION_Y: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_s = tl.program_id(1).to(tl.int64)
    i_r, i_c = _tile_coords(i_t)
    if i_s < SX:
        k_lo = i_s * CHUNK
        _gram_partial(x_ptr, ws_ptr, M, DX, k_lo, tl.minimum(k_lo + CHUNK, DX), i_r, i_c, i_s,
                      BM, BK, DOT_FP32, PRECISION_X)
    else:
        k_lo = (i_s - SX) * CHUNK
        _gram_partial(y_ptr, ws_ptr, M, DY, k_lo, tl.minimum(k_lo + CHUNK, DY), i_r, i_c, i_s,
                      BM, BK, DOT_FP32, PRECISION_Y)


@triton.jit
def _hsic_gram_fwd_epilogue_kernel(
    ws_ptr,  # partial Gram matrices (SX + SY, M, M) fp32
    out_ptr,  # centered kernels (2, M, M) fp32
    r_ptr,  # signed squared distances (2, M, M) fp32, saved for the backward
    M, SX, SY, BW_X, BW_Y,
    BR: tl.constexpr, BLOCK_M: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1).to(tl.int64)
    o_i = i_b * BR + tl.arange(0, BR)  # [BR] rows
    o_j = tl.arange(0, BLOCK_M)  # [BLOCK_M] columns
    m_i = o_i < M
    m_j = o_j < M
    m_ij = m_i[:, None] & m_j[None, :]
    o_sym = tl.maximum(o_i[:, None], o_j[None, :]) * M + tl.minimum(o_i[:, None], o_j[None, :])  # [BR, BLOCK_M]

    b_g = tl.zeros([BR, BLOCK_M], dtype=tl.float32)
    b_ni = tl.zeros([BR], dtype=tl.float32)
    b_nj = tl.zeros([BLOCK_M], dtype=tl.float32)
    for s in range(i_v * SX, SX + i_v * SY):  # this variable's splits, in order
        p_ws = ws_ptr + s * M * M
        b_g += tl.load(p_ws + o_sym, mask=m_ij, other=0.0)
        b_ni += tl.load(p_ws + o_i * (M + 1), mask=m_i, other=0.0)
        b_nj += tl.load(p_ws + o_j * (M + 1), mask=m_j, other=0.0)
    b_r = (b_ni[:, None] + b_nj[None, :]) - 2.0 * b_g  # [BR, BLOCK_M]
    bw = tl.where(i_v == 0, BW_X, BW_Y)
    b_e = tl.where(m_ij, _expm1(-tl.abs(b_r) / bw), 0.0)  # K − 1
    b_out = b_e - (tl.sum(b_e, axis=1) / M)[:, None]  # K − rowmean(K)
    o_out = i_v * M * M + o_i[:, None] * M + o_j[None, :]
    tl.store(out_ptr + o_out, b_out, mask=m_ij)
    tl.store(r_ptr + o_out, b_r, mask=m_ij)


@triton.jit
def _hsic_gram_bwd_rowmean_kernel(
    g_ptr,  # dL/dout (2·M, M), contiguous
    mu_ptr,  # row means (2·M,) fp32
    ROWS, M,
    BR: tl.constexpr, BLOCK_M: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    o_i = i_b * BR + tl.arange(0, BR)  # [BR] rows of both variables
    o_j = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    m_i = o_i < ROWS
    b_g = tl.load(g_ptr + o_i[:, None] * M + o_j[None, :], mask=m_i[:, None] & (o_j < M)[None, :], other=0.0)
    tl.store(mu_ptr + o_i, tl.sum(b_g.to(tl.float32), axis=1) / M, mask=m_i)


@triton.jit
def _hsic_gram_bwd_kernel(
    g_ptr,  # dL/dout (2, M, M), contiguous
    mu_ptr,  # row means of dL/dout (2, M) fp32
    r_ptr,  # signed squared distances (2, M, M) fp32, symmetric
    lap_ptr,  # 2 (diag(S·1) − S) (2, M, M) fp32
    M, BW_X, BW_Y,
    BR: tl.constexpr, BLOCK_M: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1).to(tl.int64)
    o_i = i_b * BR + tl.arange(0, BR)  # [BR] rows
    o_j = tl.arange(0, BLOCK_M)  # [BLOCK_M] columns
    m_i = o_i < M
    m_j = o_j < M
    m_ij = m_i[:, None] & m_j[None, :]
    o_v = i_v * M * M
    o_ij = o_i[:, None] * M + o_j[None, :]  # [BR, BLOCK_M]
    b_g = tl.load(g_ptr + o_v + o_ij, mask=m_ij, other=0.0).to(tl.float32)
    b_gt = tl.load(g_ptr + o_v + o_j[None, :] * M + o_i[:, None], mask=m_ij, other=0.0).to(tl.float32)  # G_ji
    b_mui = tl.load(mu_ptr + i_v * M + o_i, mask=m_i, other=0.0)  # [BR]
    b_muj = tl.load(mu_ptr + i_v * M + o_j, mask=m_j, other=0.0)  # [BLOCK_M]
    b_r = tl.load(r_ptr + o_v + o_ij, mask=m_ij, other=0.0)  # r_ij = r_ji
    bw = tl.where(i_v == 0, BW_X, BW_Y)
    b_sign = tl.where(b_r > 0, 1.0, tl.where(b_r < 0, -1.0, 0.0))
    b_k = 1.0 + _expm1(-tl.abs(b_r) / bw)  # K = 1 + e, as the forward computes e
    b_s = -((b_g - b_mui[:, None]) + (b_gt - b_muj[None, :])) * b_k * b_sign / bw  # S = W + Wᵀ
    b_s = tl.where(m_ij, b_s, 0.0)
    b_deg = tl.sum(b_s, axis=1)  # [BR]
    b_lap = 2.0 * (tl.where(o_i[:, None] == o_j[None, :], b_deg[:, None], 0.0) - b_s)
    tl.store(lap_ptr + o_v + o_ij, b_lap, mask=m_ij)


@triton.jit
def _lap_matmul(lap_ptr, a_ptr, da_ptr, M, K, i_m, i_n,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr):
    """da[rows, cols] = lap[rows, :] @ a[:, cols] for lap (M, M) fp32, a and da (M, K); i_m, i_n int64."""
    o_m = i_m * BM + tl.arange(0, BM)  # [BM]
    o_n = i_n * BN + tl.arange(0, BN)  # [BN]
    m_m = o_m < M
    m_n = o_n < K
    b_acc = tl.zeros([BM, BN], dtype=tl.float32)
    for j0 in range(0, M, BK):
        o_j = (j0 + tl.arange(0, BK)).to(tl.int64)  # [BK] int64: o_j * K passes 2³¹ when m·d does
        m_j = o_j < M
        b_l = tl.load(lap_ptr + o_m[:, None] * M + o_j[None, :], mask=m_m[:, None] & m_j[None, :], other=0.0)
        b_a = tl.load(a_ptr + o_j[:, None] * K + o_n[None, :], mask=m_j[:, None] & m_n[None, :], other=0.0)
        b_acc = tl.dot(b_l, b_a.to(tl.float32), b_acc, input_precision=PRECISION)  # [BM, BK] @ [BK, BN]
    p_da = da_ptr + o_m[:, None] * K + o_n[None, :]
    tl.store(p_da, b_acc.to(da_ptr.dtype.element_ty), mask=m_m[:, None] & m_n[None, :])


@triton.jit
def _hsic_gram_bwd_gemm_kernel(
    lap_ptr,  # 2 (diag(S·1) − S) (2, M, M) fp32
    x_ptr,  # x (M, DX), contiguous
    y_ptr,  # y (M, DY), contiguous
    dx_ptr,  # dL/dx (M, DX) in x's dtype (unused when NX = 0)
    dy_ptr,  # dL/dy (M, DY) in y's dtype (unused when the grid has no y tiles)
    M, DX, DY, NX, M_TILES,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    PRECISION_X: tl.constexpr, PRECISION_Y: tl.constexpr,
):
    i_p = tl.program_id(0).to(tl.int64)  # M_TILES row tiles × (NX + NY) column tiles, row tiles fastest
    i_m = i_p % M_TILES
    i_n = i_p // M_TILES
    if i_n < NX:
        _lap_matmul(lap_ptr, x_ptr, dx_ptr, M, DX, i_m, i_n, BM, BN, BK, PRECISION_X)
    else:
        _lap_matmul(lap_ptr + M * M, y_ptr, dy_ptr, M, DY, i_m, i_n - NX, BM, BN, BK, PRECISION_Y)


@triton.jit
def _hsic_gram_expm1_kernel(z_ptr, e_ptr, N, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(e_ptr + o, _expm1(tl.load(z_ptr + o, mask=o < N, other=0.0)), mask=o < N)


# ---------------------------------------------------------------------------------------------- launchers
def _precision(dtype: torch.dtype) -> str:
    """Input precision of a dot with fp32 operands made from ``dtype`` inputs: fp32 inputs as torch's fp32
    matmuls (3xTF32 for its default "highest" precision, else TF32); fp16/bf16 ones (exact in TF32) with TF32.
    The Gram dots of 16-bit inputs take 16-bit operands and ignore it."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "tf32x3"
    return "tf32"


def _row_blocks(m: int) -> tuple[int, int]:
    """(BR, BLOCK_M) of the row-wise kernels: whole rows of next_pow2(m) columns, BR·BLOCK_M ≤ ROW_ELEMS."""
    block_m = _utils.next_pow2(m)
    return max(1, min(ROW_ELEMS // block_m, block_m)), block_m


def _check(x: torch.Tensor, y: torch.Tensor):
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"hsic_gram: expected x (m, dx) and y (m, dy), got {tuple(x.shape)} and {tuple(y.shape)}")
    m = x.shape[0]
    if not 2 <= m <= MAX_M or not 1 <= x.shape[1] <= MAX_D or not 1 <= y.shape[1] <= MAX_D:
        raise ValueError(f"hsic_gram: needs 2 ≤ m ≤ {MAX_M} samples and 1 ≤ d ≤ {MAX_D} columns, got "
                         f"{tuple(x.shape)}, {tuple(y.shape)}")
    for t in (x, y):
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"hsic_gram: the kernel takes float32/float16/bfloat16 inputs, got {t.dtype}")


def hsic_gram_fwd(x: torch.Tensor, y: torch.Tensor, sigma: float, chunk: int | None = None):
    """(out, r), both (2, m, m) float32: the centered kernels and the signed squared distances (see the module).

    ``chunk`` (columns per split, a multiple of the reduction step) overrides the split heuristic (tests).
    """
    _check(x, y)
    x, y = x.contiguous(), y.contiguous()
    (m, dx), dy = x.shape, y.shape[1]
    interp = x.device.type != "cuda"
    bm = min(BLOCK_M_MAX, _utils.next_pow2(m))
    bk = INTERPRETER_BK if interp else 64 if x.element_size() == y.element_size() == 2 else 32
    tiles = triton.cdiv(m, bm) * (triton.cdiv(m, bm) + 1) // 2
    if chunk is None:
        splits = triton.cdiv(PROGRAMS_PER_SM * _utils.num_sms(x.device), tiles)
        splits = max(2, min(splits, WORKSPACE_MAX // (m * m)))
        chunk = triton.cdiv(triton.cdiv(dx + dy, splits), bk) * bk
    elif chunk % bk:
        raise ValueError(f"hsic_gram: chunk {chunk} is not a multiple of the reduction step {bk}")
    sx, sy = triton.cdiv(dx, chunk), triton.cdiv(dy, chunk)
    if sx + sy > 65535:
        raise ValueError(f"hsic_gram: chunk {chunk} gives {sx + sy} > 65535 splits (grid dimension 1)")
    ws = _utils.empty((sx + sy, m, m), device=x.device, dtype=torch.float32)
    out = _utils.empty((2, m, m), device=x.device, dtype=torch.float32)
    r = _utils.empty((2, m, m), device=x.device, dtype=torch.float32)
    br, block_m = _row_blocks(m)
    with _utils.device_guard(x):
        # Occupancy 0.12-0.19 (96 KB smem or 164 registers): a 3-stage async-load pipeline feeds the wgmma.
        _hsic_gram_fwd_kernel[(tiles, sx + sy)](
            x, y, ws, m, dx, dy, sx, chunk, BM=bm, BK=bk, DOT_FP32=interp,
            PRECISION_X="ieee" if interp else _precision(x.dtype),
            PRECISION_Y="ieee" if interp else _precision(y.dtype),
            num_warps=4, num_stages=NUM_STAGES,
        )
        _hsic_gram_fwd_epilogue_kernel[(triton.cdiv(m, br), 2)](
            ws, out, r, m, sx, sy, 2.0 * sigma * sigma * dx, 2.0 * sigma * sigma * dy, BR=br, BLOCK_M=block_m,
            num_warps=8,  # 2048-element row blocks at 8 warps: occupancy ≥ 0.38 (4096 at 4 warps: 0.19)
        )
    return out, r


def hsic_gram_bwd(grad: torch.Tensor, r: torch.Tensor, x: torch.Tensor, y: torch.Tensor, sigma: float,
                  need_x: bool = True, need_y: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dy) in x's and y's dtypes; a variable that needs no gradient gets an empty (0,) tensor instead."""
    _check(x, y)
    (m, dx), dy = x.shape, y.shape[1]
    if grad.shape != (2, m, m) or r.shape != (2, m, m):
        raise ValueError(f"hsic_gram: grad and r must be (2, {m}, {m}), got {tuple(grad.shape)}, {tuple(r.shape)}")
    grad, r, x, y = grad.contiguous(), r.contiguous(), x.contiguous(), y.contiguous()
    gx = _utils.empty((m, dx) if need_x else (0,), device=x.device, dtype=x.dtype)
    gy = _utils.empty((m, dy) if need_y else (0,), device=y.device, dtype=y.dtype)
    if not (need_x or need_y):
        return gx, gy
    br, block_m = _row_blocks(m)
    mu = _utils.empty((2, m), device=x.device, dtype=torch.float32)
    lap = _utils.empty((2, m, m), device=x.device, dtype=torch.float32)
    interp = x.device.type != "cuda"
    bm = min(BLOCK_M_MAX, _utils.next_pow2(m))
    bn = INTERPRETER_BK if interp else BLOCK_N
    bk = min(32, _utils.next_pow2(m))
    m_tiles = triton.cdiv(m, bm)
    nx = triton.cdiv(dx, bn) if need_x else 0
    ny = triton.cdiv(dy, bn) if need_y else 0
    with _utils.device_guard(x):
        _hsic_gram_bwd_rowmean_kernel[(triton.cdiv(2 * m, br),)](grad, mu, 2 * m, m, BR=br, BLOCK_M=block_m,
                                                                   num_warps=4)
        _hsic_gram_bwd_kernel[(triton.cdiv(m, br), 2)](
            grad, mu, r, lap, m, 2.0 * sigma * sigma * dx, 2.0 * sigma * sigma * dy, BR=br, BLOCK_M=block_m,
            num_warps=8,  # as the epilogue
        )
        # One grid dimension: nx + ny column tiles pass 65 535 (the limit of dimensions 1 and 2) beyond
        # dx + dy ≈ 4.2 M. Row tiles vary fastest: the programs that read one column tile of a run together.
        # Occupancy 0.12 for fp32 (3xTF32, 138 registers): a pipelined wgmma GEMM, as the forward.
        _hsic_gram_bwd_gemm_kernel[(m_tiles * (nx + ny),)](
            lap, x, y, gx, gy, m, dx, dy, nx, m_tiles, BM=bm, BN=bn, BK=bk,
            PRECISION_X="ieee" if interp else _precision(x.dtype),
            PRECISION_Y="ieee" if interp else _precision(y.dtype),
            num_warps=8, num_stages=NUM_STAGES,
        )
    return gx, gy


def expm1(z: torch.Tensor) -> torch.Tensor:
    """The kernels' ``_expm1`` applied to a float32 tensor (to test its accuracy)."""
    z = z.contiguous().float()
    e = _utils.empty(z.shape, device=z.device, dtype=torch.float32)
    with _utils.device_guard(z):
        _hsic_gram_expm1_kernel[(triton.cdiv(z.numel(), 1024),)](z, e, z.numel(), BLOCK=1024)
    return e
