"""MAE's decoder input, fused: unshuffle the visible tokens, fill the mask tokens, add the positional embedding.

Shapes: x (N, T, Dd) with T = 1 + L_keep (CLS first, then the kept tokens in shuffled order); mask_token (Dd,);
ids_restore (N, L) int64, a permutation of 0..L-1 per sample (MAE's ``argsort(ids_shuffle)``; with
``TRITON_DEBUG=1`` device-side asserts check that it lies in [0, L), without it an index out of range reads
and writes out of bounds silently); pos_embed (1 + L, Dd), CLS row first; out (N, 1 + L, Dd) in
``promote_types(x, mask_token, pos_embed)``.

Forward (``_decoder_unshuffle_fwd_kernel``), one program per [BL output rows, BD columns] tile of one sample:

    out[n, 0]     = x[n, 0] + pos_embed[0]
    out[n, 1 + l] = (x[n, 1 + r] if r < L_keep else mask_token) + pos_embed[1 + l],   r = ids_restore[n, l]

Every operand is loaded, upcast to fp32 (exact), added once and rounded once to the output dtype. An add of two
values of one dtype computed in fp32 and rounded is the correctly rounded sum (fp32 has more than twice the
mantissa of fp16/bf16 plus two bits, so the double rounding is harmless), and for an fp32 output the upcasts
are exact: the output equals the reference's ``cat``/``gather``/``+`` bit for bit in every dtype combination.

Backward (``_decoder_unshuffle_bwd_kernel``), one pass over g = grad_out, one program per [BL rows, BD columns]
tile and per range of samples (the split), looping over its samples:

- grad_x[n, 0] = g[n, 0] and grad_x[n, 1 + r] = g[n, 1 + l] for r < L_keep: a permutation, so every element of
  grad_x is written exactly once (no zero fill, no atomics), cast once from g's dtype to x's (exact, as the
  reference's ``cat`` backward casts);
- the mask-token gradient Σ_{n, l: r ≥ L_keep} g[n, 1 + l] and the positional-embedding gradient Σ_n g[n]
  are accumulated in fp32 per program, written as fp32 partials (split, tiles, Dd) and (split, 1 + L, Dd), and
  summed by the launcher (deterministic). Each of the three is computed only when asked for (NEED_* flags).

Block sizes are fixed heuristics (no autotune, so the interpreter needs no special path), not tuned on a GPU:
BD ≤ 256 columns, BL·BD ≤ 4096 elements per tile, 4 warps forward and 8 backward (no register spill on sm_90).
The split aims at four programs per SM, also when the positional gradient's fp32 partials (split × (1 + L) ×
Dd × 4 bytes, a few MB) are written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _utils

BLOCK_D_MAX = 256
"""Largest tile of the Dd columns."""
TILE_ELEMENTS = 4096
"""Rows × columns of one tile (BL · BD): 32 values per thread at 4 warps, 16 at 8."""
NUM_WARPS = {"fwd": 4, "bwd": 8}
"""Warps per program. The backward's fp32 positional accumulator and 64-bit addresses need 255 registers and
spill at 4 warps (ptxas, sm_90, 32 × 128 tile); 8 warps: no spill (bench/compile_check.py)."""
PROGRAMS_PER_SM = 4
"""Backward split target: programs per SM."""


@triton.jit
def _source_rows(ids_ptr, o_t, m_t, i_n, L, L_KEEP):
    """For output rows ``o_t`` of sample ``i_n``: whether each comes from x (CLS or a kept token) and its row."""
    m_tok = m_t & (o_t > 0)
    b_r = tl.load(ids_ptr + i_n * L + (o_t - 1), mask=m_tok, other=0)  # [BL] ids_restore[n, t - 1]
    tl.device_assert((b_r >= 0) & (b_r < L), "decoder_unshuffle: ids_restore out of range [0, L)")
    b_kept = (o_t == 0) | (b_r < L_KEEP)  # [BL]
    o_src = tl.where(o_t == 0, 0, 1 + b_r)  # [BL] row of x (CLS row 0, kept token 1 + r)
    return b_kept, o_src


@triton.jit
def _decoder_unshuffle_fwd_kernel(
    x_ptr,  # x (N, T, Dd), contiguous, T = 1 + L_keep
    mt_ptr,  # mask_token (Dd,)
    ids_ptr,  # ids_restore (N, L) int64, contiguous
    pos_ptr,  # pos_embed (1 + L, Dd), contiguous
    y_ptr,  # out (N, 1 + L, Dd), contiguous
    L, L_KEEP, DD, N_LBLOCKS,
    BL: tl.constexpr, BD: tl.constexpr,
):
    i_nl = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1).to(tl.int64)
    i_n = i_nl // N_LBLOCKS
    i_l = i_nl % N_LBLOCKS
    T = 1 + L_KEEP
    o_t = i_l * BL + tl.arange(0, BL)  # [BL] output rows (0 = CLS)
    o_d = i_d * BD + tl.arange(0, BD)  # [BD]
    m_t = o_t < 1 + L
    m_d = o_d < DD
    b_kept, o_src = _source_rows(ids_ptr, o_t, m_t, i_n, L, L_KEEP)  # [BL], [BL]

    m_x = (m_t & b_kept)[:, None] & m_d[None, :]
    p_x = x_ptr + i_n * T * DD + o_src[:, None] * DD + o_d[None, :]  # [BL, BD] gather of the visible rows
    b_x = tl.load(p_x, mask=m_x, other=0.0).to(tl.float32)  # [BL, BD]
    b_mt = tl.load(mt_ptr + o_d, mask=m_d, other=0.0).to(tl.float32)  # [BD]
    m_out = m_t[:, None] & m_d[None, :]
    b_pos = tl.load(pos_ptr + o_t[:, None] * DD + o_d[None, :], mask=m_out, other=0.0).to(tl.float32)  # [BL, BD]
    b_y = tl.where(b_kept[:, None], b_x, b_mt[None, :]) + b_pos  # [BL, BD] one rounding, at the store
    tl.store(y_ptr + i_n * (1 + L) * DD + o_t[:, None] * DD + o_d[None, :], b_y.to(y_ptr.dtype.element_ty),
             mask=m_out)


@triton.jit
def _decoder_unshuffle_bwd_kernel(
    g_ptr,  # grad_out (N, 1 + L, Dd), contiguous
    ids_ptr,  # ids_restore (N, L) int64, contiguous
    dx_ptr,  # grad_x (N, T, Dd), contiguous: every element written once (when NEED_X)
    dmt_ptr,  # mask-token partials (SPLIT, N_LBLOCKS, Dd) fp32 (when NEED_MASK)
    dpos_ptr,  # pos_embed partials (SPLIT, 1 + L, Dd) fp32 (when NEED_POS)
    N, L, L_KEEP, DD, N_LBLOCKS, N_PER_SPLIT,
    BL: tl.constexpr, BD: tl.constexpr,
    NEED_X: tl.constexpr, NEED_MASK: tl.constexpr, NEED_POS: tl.constexpr,
):
    i_l = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1).to(tl.int64)
    i_s = tl.program_id(2).to(tl.int64)
    T = 1 + L_KEEP
    o_t = i_l * BL + tl.arange(0, BL)  # [BL] rows of g (0 = CLS)
    o_d = i_d * BD + tl.arange(0, BD)  # [BD]
    m_t = o_t < 1 + L
    m_d = o_d < DD
    m_g = m_t[:, None] & m_d[None, :]

    b_dmt = tl.zeros([BD], dtype=tl.float32)
    b_dpos = tl.zeros([BL, BD], dtype=tl.float32)
    n_end = tl.minimum((i_s + 1) * N_PER_SPLIT, N)
    for i_n in range(i_s * N_PER_SPLIT, n_end):
        p_g = g_ptr + i_n * (1 + L) * DD + o_t[:, None] * DD + o_d[None, :]  # [BL, BD]
        b_g = tl.load(p_g, mask=m_g, other=0.0).to(tl.float32)  # [BL, BD]
        b_kept, o_src = _source_rows(ids_ptr, o_t, m_t, i_n, L, L_KEEP)  # [BL], [BL]
        if NEED_X:
            p_dx = dx_ptr + i_n * T * DD + o_src[:, None] * DD + o_d[None, :]  # [BL, BD] scatter, a permutation
            tl.store(p_dx, b_g.to(dx_ptr.dtype.element_ty), mask=(m_t & b_kept)[:, None] & m_d[None, :])
        if NEED_MASK:
            b_dmt += tl.sum(tl.where(b_kept[:, None], 0.0, b_g), axis=0)  # [BD] masked rows only
        if NEED_POS:
            b_dpos += b_g

    if NEED_MASK:
        tl.store(dmt_ptr + (i_s * N_LBLOCKS + i_l) * DD + o_d, b_dmt, mask=m_d)
    if NEED_POS:
        tl.store(dpos_ptr + i_s * (1 + L) * DD + o_t[:, None] * DD + o_d[None, :], b_dpos, mask=m_g)


# ---------------------------------------------------------------------------------------------- launchers
def _blocks(length: int, dd: int) -> tuple[int, int]:
    """(BL, BD): BD ≤ 256 columns, BL·BD ≤ 4096, BL no larger than the 1 + L rows need."""
    bd = min(BLOCK_D_MAX, _utils.next_pow2(dd))
    bl = max(1, min(TILE_ELEMENTS // bd, _utils.next_pow2(1 + length, minimum=2)))
    return bl, bd


def _check_ids(ids_restore: torch.Tensor, n: int) -> int:
    if ids_restore.dim() != 2 or ids_restore.shape[0] != n or ids_restore.dtype != torch.int64:
        raise ValueError(f"decoder_unshuffle: ids_restore must be int64 (N={n}, L), got "
                         f"{ids_restore.dtype} {tuple(ids_restore.shape)}")
    return ids_restore.shape[1]


def decoder_unshuffle_fwd(x: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor,
                          pos_embed: torch.Tensor) -> torch.Tensor:
    """The decoder's input (N, 1 + L, Dd) in ``promote_types(x, mask_token, pos_embed)``; see the module."""
    if x.dim() != 3:
        raise ValueError(f"decoder_unshuffle: x must be (N, 1 + L_keep, Dd), got {tuple(x.shape)}")
    n, t, dd = x.shape
    length = _check_ids(ids_restore, n)
    if not 1 <= t <= 1 + length or mask_token.shape != (dd,) or pos_embed.shape != (1 + length, dd):
        raise ValueError(f"decoder_unshuffle: need x (N, 1 + L_keep, Dd) with L_keep ≤ L = {length}, mask_token "
                         f"({dd},) and pos_embed ({1 + length}, {dd}); got {tuple(x.shape)}, "
                         f"{tuple(mask_token.shape)}, {tuple(pos_embed.shape)}")
    x, mask_token = x.contiguous(), mask_token.contiguous()
    ids_restore, pos_embed = ids_restore.contiguous(), pos_embed.contiguous()
    dtype = torch.promote_types(torch.promote_types(x.dtype, mask_token.dtype), pos_embed.dtype)
    y = _utils.empty((n, 1 + length, dd), device=x.device, dtype=dtype)
    if y.numel() == 0:
        return y
    bl, bd = _blocks(length, dd)
    n_lblocks = triton.cdiv(1 + length, bl)
    with _utils.device_guard(x):
        _decoder_unshuffle_fwd_kernel[(n * n_lblocks, triton.cdiv(dd, bd))](
            x, mask_token, ids_restore, pos_embed, y, length, t - 1, dd, n_lblocks, BL=bl, BD=bd,
            num_warps=NUM_WARPS["fwd"],
        )
    return y


def decoder_unshuffle_bwd(
    grad_out: torch.Tensor, ids_restore: torch.Tensor, l_keep: int, x_dtype: torch.dtype,
    mask_dtype: torch.dtype, pos_dtype: torch.dtype, need_x: bool, need_mask: bool, need_pos: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x (N, 1 + L_keep, Dd), grad_mask_token (Dd,), grad_pos_embed (1 + L, Dd)) in the inputs' dtypes.

    A gradient that is not asked for comes back as an empty (0,) tensor and costs nothing.
    """
    if grad_out.dim() != 3:
        raise ValueError(f"decoder_unshuffle: grad_out must be (N, 1 + L, Dd), got {tuple(grad_out.shape)}")
    n, rows, dd = grad_out.shape
    length = _check_ids(ids_restore, n)
    if rows != 1 + length or not 0 <= l_keep <= length:
        raise ValueError(f"decoder_unshuffle: grad_out {tuple(grad_out.shape)} needs 1 + L = {1 + length} rows "
                         f"and 0 ≤ L_keep = {l_keep} ≤ L")
    grad_out, ids_restore = grad_out.contiguous(), ids_restore.contiguous()
    device = grad_out.device
    nothing = torch.empty(0, device=device, dtype=torch.float32)
    dx = _utils.empty((n, 1 + l_keep, dd), device=device, dtype=x_dtype) if need_x else nothing
    bl, bd = _blocks(length, dd)
    n_lblocks, n_dblocks = triton.cdiv(1 + length, bl), triton.cdiv(dd, bd)
    split = max(1, min(n, 65535, triton.cdiv(PROGRAMS_PER_SM * _utils.num_sms(device), n_lblocks * n_dblocks)))
    n_per_split = max(1, triton.cdiv(n, split))
    split = max(1, triton.cdiv(n, n_per_split))  # no empty ranges
    dmt = _utils.empty((split, n_lblocks, dd), device=device, dtype=torch.float32) if need_mask else nothing
    dpos = _utils.empty((split, 1 + length, dd), device=device, dtype=torch.float32) if need_pos else nothing
    if n == 0 or dd == 0:  # nothing to read: the reductions are zero
        dmt, dpos = dmt.zero_(), dpos.zero_()
    elif need_x or need_mask or need_pos:
        with _utils.device_guard(grad_out):
            _decoder_unshuffle_bwd_kernel[(n_lblocks, n_dblocks, split)](
                grad_out, ids_restore, dx, dmt, dpos, n, length, l_keep, dd, n_lblocks, n_per_split, BL=bl, BD=bd,
                NEED_X=need_x, NEED_MASK=need_mask, NEED_POS=need_pos, num_warps=NUM_WARPS["bwd"],
            )
    d_mask = torch.empty(0, device=device, dtype=mask_dtype)
    d_pos = torch.empty(0, device=device, dtype=pos_dtype)
    if need_mask:
        d_mask = dmt.sum((0, 1)).to(mask_dtype)
    if need_pos:
        d_pos = (dpos[0] if split == 1 else dpos.sum(0)).to(pos_dtype)
    if not need_x:
        dx = torch.empty(0, device=device, dtype=x_dtype)
    return dx, d_mask, d_pos
