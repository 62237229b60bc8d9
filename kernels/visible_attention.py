"""Non-causal multi-head attention on the fixed-length visible token set: FlashAttention-2 forward and backward.

    o = softmax(q kᵀ · hd^-0.5) v        q, k, v, o: (N, H, T, hd);  stats: (2, N, H, T) float32

Forward (one program per (sequence·head, block of BM queries)): the query block stays in registers while the
keys and values stream by in blocks of BN, with the online softmax (running row max ``m``, running sum ``l``).
It stores ``o = acc / l`` and, for the backward, the softmax statistics ``stats[0] = m`` (row max of the scaled
scores) and ``stats[1] = log l``; the row log-sum-exp is their sum.

Backward (the FA2 recomputation; nothing of size T×T is stored):

1. ``delta = rowsum(dO ∘ O)`` per query row (``_visible_attention_bwd_delta_kernel``);
2. per block of BN keys: recompute ``P = exp((Q Kᵀ·scale − m) − log l)`` for every query block, accumulate
   ``dV += Pᵀ dO`` and ``dK += (P ∘ (dO Vᵀ − delta))ᵀ Q · scale`` (``_visible_attention_bwd_dkdv_kernel``);
3. per block of BM queries: recompute ``P``, accumulate ``dQ += (P ∘ (dO Vᵀ − delta)) K · scale``
   (``_visible_attention_bwd_dq_kernel``). Separate dQ and dK/dV kernels need no atomics.

Precision: every elementwise step (scores, softmax, accumulators, ``delta``) is float32. The matrix products
take their operands in the input dtype (fp16/bf16 on tensor cores, the probabilities rounded to it first, as
in FlashAttention) and accumulate in float32; float32 inputs use ``input_precision="ieee"`` (no TF32).
Peaked attention (scores of magnitude ~60, p ≈ 1 for a few keys) needs two departures from FlashAttention to
keep the float32 backward as accurate as the float32 reference (the ``peaked`` case of
tests/ops/test_visible_attention.py; ratios of max errors to the reference's own, measured in the interpreter):

- Two statistics instead of a single ``lse = m + log l``: ``S − m`` is exact near the maximum and ``log l`` is
  small, so the recomputed P is as accurate as the reference's. Rounding a single ``lse`` of magnitude ~60
  shifts every P of a row by ~2e-6 relative: dV up to 6× the reference's error.
- Every kernel computes a score tile the same way, ``Q_blk K_blkᵀ`` with the forward's BM × BN shape, then
  the product with the scale, rounded on its own, then the masking ``where``; so the recomputed scores are the
  forward's bit for bit (as far as the dot lowering is deterministic) and the row max cancels exactly. The FA2
  tutorial's ``K Qᵀ`` in the dK/dV kernel rounds differently: dV up to 10×; so does a product fused with the
  subtraction of the row max into one FMA: dV up to 7×. The ``where`` between them keeps the compiler from
  fusing (bench/compile_check.py checks the PTX: ``sm_scale`` is never a factor of an ``fma``). The price is a
  transposed tile (``tl.trans``) in two of the dK/dV products.
- Natural units (``tl.exp``) rather than FlashAttention's base 2: ``S · log2 e`` rounds at a larger magnitude.

Layouts: q, k, v and dO are read through their strides (the model's q, k, v are permuted views of one
(N, T, 3, H, hd) tensor); only the head dimension must have stride 1 (the launchers copy otherwise). ``o`` is
written in (N, T, H, hd) memory order and returned as its (N, H, T, hd) view, so the model's
``o.transpose(1, 2).reshape(N, T, H·hd)`` is free; dq, dk, dv are contiguous.

Limits: hd ≤ 128 (any value: the head dimension is padded with masks to the next power of two ≥ 16, as
``tl.dot`` needs); any T ≥ 1 (the last block is masked); grids are (N·H, ⌈T/B⌉), N·H < 2³¹, ⌈T/B⌉ ≤ 65 535.
Block sizes are fixed heuristics (``_blocks``), not autotuned: T ≤ 257 here, so one sequence is only a few
blocks and the N·H programs fill the GPU; a measured sweep belongs in bench/results.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _utils

MAX_HEAD_DIM = 128
"""Largest head dimension: larger ones would need more registers than a block of 64 rows can hold."""

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _blocks(t: int, bd: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BM query rows, BN key rows, warps, dK/dV pipeline stages) of a score tile, shared by all kernels.

    fp16/bf16: 64 × 64 at 4 warps, BN halved at hd > 64 to bound registers. fp32 (IEEE dots, on CUDA cores):
    32 × 32 at 8 warps; at 64 × 64 every matmul kernel spills (up to 44 KB per thread at hd 64). At hd > 64
    (BD = 128) fp32 takes 16 × 16 at 4 warps and an unpipelined dK/dV loop: 32 × 32 gives the dK/dV kernel 255
    registers and 672 B of spills. Both shrink to the next power of two ≥ 16 of a short sequence. (ptxas, sm_90,
    bench/compile_check.py.) The forward and dQ kernels keep BM queries resident and stream keys; the dK/dV
    kernel keeps BN keys resident and streams queries."""
    if dtype == torch.float32 and bd > 64:
        return min(16, _utils.next_pow2(t)), min(16, _utils.next_pow2(t)), 4, 1
    if dtype == torch.float32:
        return min(32, _utils.next_pow2(t)), min(32, _utils.next_pow2(t)), 8, 2
    bm = min(64, _utils.next_pow2(t))
    bn = min(64 if bd <= 64 else 32, _utils.next_pow2(t))
    return bm, bn, 4, 2


@triton.jit
def _visible_attention_fwd_kernel(
    q_ptr,  # (N, H, T, D) queries, strides (sqn, sqh, sqt, 1)
    k_ptr,  # (N, H, T, D) keys, strides (skn, skh, skt, 1)
    v_ptr,  # (N, H, T, D) values, strides (svn, svh, svt, 1)
    o_ptr,  # (N, H, T, D) output, strides (son, soh, sot, 1)
    m_ptr,  # (N, H, T) float32 row max of the scaled scores, contiguous (stats[0])
    logl_ptr,  # (N, H, T) float32 log of the row sum of exp(scores - max), contiguous (stats[1])
    sqn, sqh, sqt, skn, skh, skt, svn, svh, svt, son, soh, sot,
    H, T, D,
    sm_scale,  # hd^-0.5
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PRECISION: tl.constexpr,
):
    i_nh = tl.program_id(0).to(tl.int64)
    i_m = tl.program_id(1).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    o_m = i_m * BM + tl.arange(0, BM)  # [BM] query rows
    o_d = tl.arange(0, BD)  # [BD] head dimension, padded
    m_m, m_d = o_m < T, o_d < D

    p_q = q_ptr + i_n * sqn + i_h * sqh + o_m[:, None] * sqt + o_d[None, :]
    b_q = tl.load(p_q, mask=m_m[:, None] & m_d[None, :], other=0.0)  # [BM, BD] in the input dtype (dot operand)
    k_base = k_ptr + i_n * skn + i_h * skh
    v_base = v_ptr + i_n * svn + i_h * svh

    b_mx = tl.full([BM], float("-inf"), dtype=tl.float32)  # running row max of the scaled scores
    b_l = tl.zeros([BM], dtype=tl.float32)  # running row sum of exp(s - b_mx)
    b_acc = tl.zeros([BM, BD], dtype=tl.float32)
    for start in range(0, T, BN):
        o_n = start + tl.arange(0, BN)  # [BN] key rows
        m_n = o_n < T
        b_k = tl.load(k_base + o_n[:, None] * skt + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0)
        b_v = tl.load(v_base + o_n[:, None] * svt + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0)
        # [BM, BD] @ [BD, BN] -> [BM, BN]
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * sm_scale
        b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        b_mx_new = tl.maximum(b_mx, tl.max(b_s, 1))  # finite: every key block holds a valid key
        b_alpha = tl.exp(b_mx - b_mx_new)  # [BM] rescales what was accumulated so far
        b_p = tl.exp(b_s - b_mx_new[:, None])  # [BM, BN]
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        # [BM, BN] @ [BN, BD] -> [BM, BD]
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=PRECISION)
        b_mx = b_mx_new

    b_o = b_acc / b_l[:, None]
    p_o = o_ptr + i_n * son + i_h * soh + o_m[:, None] * sot + o_d[None, :]
    tl.store(p_o, b_o.to(o_ptr.dtype.element_ty), mask=m_m[:, None] & m_d[None, :])
    tl.store(m_ptr + i_nh * T + o_m, b_mx, mask=m_m)
    tl.store(logl_ptr + i_nh * T + o_m, tl.log(b_l), mask=m_m)


@triton.jit
def _visible_attention_bwd_delta_kernel(
    o_ptr,  # (N, H, T, D) forward output, strides (son, soh, sot, 1)
    do_ptr,  # (N, H, T, D) output gradient, strides (sdn, sdh, sdt, 1)
    delta_ptr,  # (N, H, T) float32 rowsum(dO ∘ O), contiguous
    son, soh, sot, sdn, sdh, sdt,
    H, T, D,
    BM: tl.constexpr, BD: tl.constexpr,
):
    i_nh = tl.program_id(0).to(tl.int64)
    i_m = tl.program_id(1).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    o_m = i_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m_md = (o_m < T)[:, None] & (o_d < D)[None, :]
    b_o = tl.load(o_ptr + i_n * son + i_h * soh + o_m[:, None] * sot + o_d[None, :], mask=m_md, other=0.0)
    b_do = tl.load(do_ptr + i_n * sdn + i_h * sdh + o_m[:, None] * sdt + o_d[None, :], mask=m_md, other=0.0)
    b_delta = tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), 1)  # [BM]
    tl.store(delta_ptr + i_nh * T + o_m, b_delta, mask=o_m < T)


@triton.jit
def _visible_attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr,  # (N, H, T, D) forward inputs, strides (s?n, s?h, s?t, 1)
    do_ptr,  # (N, H, T, D) output gradient, strides (sdn, sdh, sdt, 1)
    m_ptr, logl_ptr,  # (N, H, T) float32 softmax statistics of the forward (stats[0], stats[1]), contiguous
    delta_ptr,  # (N, H, T) float32 rowsum(dO ∘ O), contiguous
    dk_ptr, dv_ptr,  # (N, H, T, D) key and value gradients, contiguous
    sqn, sqh, sqt, skn, skh, skt, svn, svh, svt, sdn, sdh, sdt,
    H, T, D,
    sm_scale,  # hd^-0.5
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PRECISION: tl.constexpr,
):
    i_nh = tl.program_id(0).to(tl.int64)
    i_j = tl.program_id(1).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    o_n = i_j * BN + tl.arange(0, BN)  # [BN] this program's key rows
    o_d = tl.arange(0, BD)
    m_n, m_d = o_n < T, o_d < D
    m_nd = m_n[:, None] & m_d[None, :]
    b_k = tl.load(k_ptr + i_n * skn + i_h * skh + o_n[:, None] * skt + o_d[None, :], mask=m_nd, other=0.0)
    b_v = tl.load(v_ptr + i_n * svn + i_h * svh + o_n[:, None] * svt + o_d[None, :], mask=m_nd, other=0.0)
    q_base = q_ptr + i_n * sqn + i_h * sqh
    do_base = do_ptr + i_n * sdn + i_h * sdh

    b_dk = tl.zeros([BN, BD], dtype=tl.float32)
    b_dv = tl.zeros([BN, BD], dtype=tl.float32)
    for start in range(0, T, BM):
        o_m = start + tl.arange(0, BM)  # [BM] query rows
        m_m = o_m < T
        m_md = m_m[:, None] & m_d[None, :]
        b_q = tl.load(q_base + o_m[:, None] * sqt + o_d[None, :], mask=m_md, other=0.0)  # [BM, BD]
        b_do = tl.load(do_base + o_m[:, None] * sdt + o_d[None, :], mask=m_md, other=0.0)  # [BM, BD]
        b_mx = tl.load(m_ptr + i_nh * T + o_m, mask=m_m, other=0.0)  # [BM]
        b_logl = tl.load(logl_ptr + i_nh * T + o_m, mask=m_m, other=0.0)  # [BM]
        b_delta = tl.load(delta_ptr + i_nh * T + o_m, mask=m_m, other=0.0)  # [BM]
        # [BM, BD] @ [BD, BN] -> [BM, BN]: the forward's score tile, same operands, shape and order
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * sm_scale
        # the product is rounded before the row max is subtracted, as in the forward: the select between them
        # keeps the two from fusing into one FMA. Padded query rows get p = 0.
        b_s = tl.where(m_m[:, None], b_s, float("-inf"))
        b_p = tl.exp((b_s - b_mx[:, None]) - b_logl[:, None])
        # [BN, BM] @ [BM, BD] -> [BN, BD]
        b_dv += tl.dot(tl.trans(b_p.to(b_do.dtype)), b_do, input_precision=PRECISION)
        # [BM, BD] @ [BD, BN] -> [BM, BN]
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        # [BN, BM] @ [BM, BD] -> [BN, BD]
        b_dk += tl.dot(tl.trans(b_ds.to(b_q.dtype)), b_q, input_precision=PRECISION)

    p_dk = dk_ptr + i_nh * T * D + o_n[:, None] * D + o_d[None, :]
    p_dv = dv_ptr + i_nh * T * D + o_n[:, None] * D + o_d[None, :]
    tl.store(p_dk, (b_dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=m_nd)
    tl.store(p_dv, b_dv.to(dv_ptr.dtype.element_ty), mask=m_nd)


@triton.jit
def _visible_attention_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr,  # (N, H, T, D) forward inputs, strides (s?n, s?h, s?t, 1)
    do_ptr,  # (N, H, T, D) output gradient, strides (sdn, sdh, sdt, 1)
    m_ptr, logl_ptr,  # (N, H, T) float32 softmax statistics of the forward (stats[0], stats[1]), contiguous
    delta_ptr,  # (N, H, T) float32 rowsum(dO ∘ O), contiguous
    dq_ptr,  # (N, H, T, D) query gradient, contiguous
    sqn, sqh, sqt, skn, skh, skt, svn, svh, svt, sdn, sdh, sdt,
    H, T, D,
    sm_scale,  # hd^-0.5
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PRECISION: tl.constexpr,
):
    i_nh = tl.program_id(0).to(tl.int64)
    i_m = tl.program_id(1).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    o_m = i_m * BM + tl.arange(0, BM)  # [BM] this program's query rows
    o_d = tl.arange(0, BD)
    m_m, m_d = o_m < T, o_d < D
    m_md = m_m[:, None] & m_d[None, :]
    b_q = tl.load(q_ptr + i_n * sqn + i_h * sqh + o_m[:, None] * sqt + o_d[None, :], mask=m_md, other=0.0)
    b_do = tl.load(do_ptr + i_n * sdn + i_h * sdh + o_m[:, None] * sdt + o_d[None, :], mask=m_md, other=0.0)
    b_mx = tl.load(m_ptr + i_nh * T + o_m, mask=m_m, other=0.0)  # [BM]
    b_logl = tl.load(logl_ptr + i_nh * T + o_m, mask=m_m, other=0.0)  # [BM]
    b_delta = tl.load(delta_ptr + i_nh * T + o_m, mask=m_m, other=0.0)  # [BM]
    k_base = k_ptr + i_n * skn + i_h * skh
    v_base = v_ptr + i_n * svn + i_h * svh

    b_dq = tl.zeros([BM, BD], dtype=tl.float32)
    for start in range(0, T, BN):
        o_n = start + tl.arange(0, BN)  # [BN] key rows
        m_n = o_n < T
        m_nd = m_n[:, None] & m_d[None, :]
        b_k = tl.load(k_base + o_n[:, None] * skt + o_d[None, :], mask=m_nd, other=0.0)  # [BN, BD]
        b_v = tl.load(v_base + o_n[:, None] * svt + o_d[None, :], mask=m_nd, other=0.0)  # [BN, BD]
        # [BM, BD] @ [BD, BN] -> [BM, BN]
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * sm_scale
        # rounded, then masked as in the forward (no FMA with the row max; padded keys get p = 0)
        b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        b_p = tl.exp((b_s - b_mx[:, None]) - b_logl[:, None])
        # [BM, BD] @ [BD, BN] -> [BM, BN]
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        # [BM, BN] @ [BN, BD] -> [BM, BD]
        b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=PRECISION)

    p_dq = dq_ptr + i_nh * T * D + o_m[:, None] * D + o_d[None, :]
    tl.store(p_dq, (b_dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=m_md)


def _head_dim_unit_stride(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when its head dimension is dense (stride 1), else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"visible_attention: q, k, v must share one (N, H, T, hd) shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"visible_attention: q, k, v must share a dtype among {SUPPORTED_DTYPES}, got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM or q.shape[2] < 1:
        raise ValueError(f"visible_attention: needs T ≥ 1 and 1 ≤ hd ≤ {MAX_HEAD_DIM}, got {tuple(q.shape)}")


def _precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: IEEE float32 for float32 inputs (no TF32); irrelevant for fp16/bf16 operands."""
    return "ieee" if dtype == torch.float32 else "tf32"


def visible_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``o = softmax(q kᵀ · hd^-0.5) v`` and the softmax statistics the backward needs.

    Args:
        q, k, v: (N, H, T, hd), one dtype (float32, float16 or bfloat16), any strides.

    Returns:
        o: (N, H, T, hd) in the input dtype, a view of an (N, T, H, hd) contiguous buffer.
        stats: (2, N, H, T) float32: ``stats[0]`` the row max m of the scaled scores ``q_i·k_j · hd^-0.5``,
        ``stats[1]`` the log of ``Σ_j exp(score_ij − m_i)``; ``stats.sum(0)`` is the row log-sum-exp.
    """
    _check(q, k, v)
    q, k, v = (_head_dim_unit_stride(x) for x in (q, k, v))
    n, h, t, d = q.shape
    o = _utils.empty((n, t, h, d), device=q.device, dtype=q.dtype).permute(0, 2, 1, 3)
    stats = _utils.empty((2, n, h, t), device=q.device, dtype=torch.float32)
    bd = _utils.next_pow2(d)
    bm, bn, warps, _ = _blocks(t, bd, q.dtype)
    # Occupancy 0.12-0.19 (136-142 registers), as FlashAttention-2: 2-stage K/V pipelining hides the latency.
    with _utils.device_guard(q):
        _visible_attention_fwd_kernel[(n * h, triton.cdiv(t, bm))](
            q, k, v, o, stats[0], stats[1],
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
            h, t, d, d**-0.5,
            BM=bm, BN=bn, BD=bd, PRECISION=_precision(q.dtype), num_warps=warps, num_stages=2,
        )
    return o, stats


def visible_attention_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, stats: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``visible_attention_fwd`` with respect to q, k and v.

    Args:
        do: (N, H, T, hd) gradient of ``o``, any strides.
        q, k, v: (N, H, T, hd) the forward inputs, any strides.
        o: (N, H, T, hd) the forward output; stats: (2, N, H, T) float32 its softmax statistics.

    Returns:
        dq, dk, dv: (N, H, T, hd) contiguous, in the input dtype.
    """
    _check(q, k, v)
    if do.shape != q.shape or o.shape != q.shape or stats.shape != (2, *q.shape[:3]):
        raise ValueError(f"visible_attention_bwd: do {tuple(do.shape)}, o {tuple(o.shape)}, stats "
                         f"{tuple(stats.shape)} do not match q {tuple(q.shape)}")
    q, k, v, o, do = (_head_dim_unit_stride(x) for x in (q, k, v, o, do.to(q.dtype)))
    stats = stats.float().contiguous()
    n, h, t, d = q.shape
    bd = _utils.next_pow2(d)
    precision = _precision(q.dtype)
    delta = _utils.empty((n, h, t), device=q.device, dtype=torch.float32)
    dq, dk, dv = (_utils.empty((n, h, t, d), device=q.device, dtype=q.dtype) for _ in range(3))
    bm, bn, warps, dkdv_stages = _blocks(t, bd, q.dtype)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    with _utils.device_guard(q):
        _visible_attention_bwd_delta_kernel[(n * h, triton.cdiv(t, bm))](
            o, do, delta, *o.stride()[:3], *do.stride()[:3], h, t, d, BM=bm, BD=bd,
        )
        # The forward's BM × BN tiles in both kernels (module docstring: recomputed scores match the forward's).
        # Occupancy 0.12-0.19 (up to 242 registers) as in FlashAttention-2: tiles must stay the forward's BM × BN.
        _visible_attention_bwd_dkdv_kernel[(n * h, triton.cdiv(t, bn))](
            q, k, v, do, stats[0], stats[1], delta, dk, dv, *strides, h, t, d, d**-0.5,
            BM=bm, BN=bn, BD=bd, PRECISION=precision, num_warps=warps, num_stages=dkdv_stages,
        )
        _visible_attention_bwd_dq_kernel[(n * h, triton.cdiv(t, bm))](
            q, k, v, do, stats[0], stats[1], delta, dq, *strides, h, t, d, d**-0.5,
            BM=bm, BN=bn, BD=bd, PRECISION=precision, num_warps=warps, num_stages=2,
        )
    return dq, dk, dv


__all__ = ["MAX_HEAD_DIM", "SUPPORTED_DTYPES", "visible_attention_bwd", "visible_attention_fwd"]
