"""MAE's decoder input, fused: put the visible tokens back in patch order, fill the mask tokens, add positions.

``forward_decoder`` (after ``decoder_embed``) concatenates the kept tokens with L - L_keep copies of the mask
token, ``torch.gather``s them back into patch order with ``ids_restore``, prepends the CLS token and adds the
decoder's positional embedding: three (N, 1 + L, Dd) intermediates. ``decoder_unshuffle`` writes the same
tensor from one kernel that reads each visible token, the mask token and the positional embedding once.

Numerics: the forward is data movement plus one add, done in fp32 and rounded once to the output dtype, which
is the reference's single rounding: the output equals the reference bit for bit in every dtype combination.
The gradient of x is a permutation of the output gradient, also exact. The mask-token and positional-embedding
gradients are sums (over the masked positions, over the batch) accumulated in fp32.
"""

from __future__ import annotations

import torch

from ._dispatch import pow2_bucket, use_triton
from .masking import masking_indices

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def decoder_unshuffle_ref(
    x: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    """The model's own path: ``MaskedAutoencoderViT.forward_decoder`` from ``decoder_embed`` to the blocks.

    Bit-identical to the model with ``mask_token = model.mask_token.view(-1)`` and
    ``pos_embed = model.decoder_pos_embed[0]``.
    """
    n, t, dd = x.shape
    length = ids_restore.shape[1]
    mask_tokens = mask_token.reshape(1, 1, dd).expand(n, length + 1 - t, -1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # (N, L, Dd) in shuffled order
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dd))  # back to patch order
    return torch.cat([x[:, :1, :], x_], dim=1) + pos_embed  # (N, 1 + L, Dd)


# ---------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("mimir_fast::decoder_unshuffle_fwd", mutates_args=())
def decoder_unshuffle_fwd(
    x: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    from mimir_fast.kernels import decoder_unshuffle as kernels

    return kernels.decoder_unshuffle_fwd(
        x.contiguous(), mask_token.contiguous(), ids_restore.contiguous(), pos_embed.contiguous()
    )


@decoder_unshuffle_fwd.register_fake
def _(x, mask_token, ids_restore, pos_embed):
    dtype = torch.promote_types(torch.promote_types(x.dtype, mask_token.dtype), pos_embed.dtype)
    return x.new_empty((x.shape[0], 1 + ids_restore.shape[1], x.shape[2]), dtype=dtype)


@torch.library.custom_op("mimir_fast::decoder_unshuffle_bwd", mutates_args=())
def decoder_unshuffle_bwd(
    grad_out: torch.Tensor, ids_restore: torch.Tensor, l_keep: int, x_dtype: torch.dtype,
    mask_dtype: torch.dtype, pos_dtype: torch.dtype, need_x: bool, need_mask: bool, need_pos: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from mimir_fast.kernels import decoder_unshuffle as kernels

    return kernels.decoder_unshuffle_bwd(
        grad_out.contiguous(), ids_restore.contiguous(), l_keep, x_dtype, mask_dtype, pos_dtype,
        need_x, need_mask, need_pos,
    )


@decoder_unshuffle_bwd.register_fake
def _(grad_out, ids_restore, l_keep, x_dtype, mask_dtype, pos_dtype, need_x, need_mask, need_pos):
    n, rows, dd = grad_out.shape
    dx = grad_out.new_empty((n, 1 + l_keep, dd) if need_x else (0,), dtype=x_dtype)
    d_mask = grad_out.new_empty((dd,) if need_mask else (0,), dtype=mask_dtype)
    d_pos = grad_out.new_empty((rows, dd) if need_pos else (0,), dtype=pos_dtype)
    return dx, d_mask, d_pos


def _setup_context(ctx, inputs, output):
    x, mask_token, ids_restore, pos_embed = inputs
    ctx.save_for_backward(ids_restore)
    ctx.l_keep = x.shape[1] - 1
    ctx.dtypes = (x.dtype, mask_token.dtype, pos_embed.dtype)


def _backward(ctx, grad_out):
    (ids_restore,) = ctx.saved_tensors
    need_x, need_mask, _, need_pos = ctx.needs_input_grad
    if not (need_x or need_mask or need_pos):
        return None, None, None, None
    d_x, d_mask, d_pos = decoder_unshuffle_bwd(
        grad_out.contiguous(), ids_restore, ctx.l_keep, *ctx.dtypes, need_x, need_mask, need_pos
    )
    return d_x if need_x else None, d_mask if need_mask else None, None, d_pos if need_pos else None


decoder_unshuffle_fwd.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------- shapes (dispatch check, benchmarks)
SHAPES = {
    "tiny": dict(n=4, length=16, keep=4, dd=40),
    "mimir_224_b256": dict(n=256, length=196, keep=49, dd=128),  # MIMIR decoder (128 wide), 224/16, 75%
    "mae_224_b256": dict(n=256, length=196, keep=49, dd=512),  # MAE decoder (512 wide), 224/16, 75%
    "cifar_p2_b256": dict(n=256, length=256, keep=64, dd=128),  # MIMIR CIFAR-10, patch 2, 75%
}
"""Named shapes: N samples, L patches, L_keep kept, decoder width Dd. ``tiny`` is for the CPU."""

GRAD_ARGNUMS = (0, 1)
"""Inputs of ``make_inputs`` that take gradients: x and mask_token; pos_embed is frozen (MAE)."""


def shape_of(x: torch.Tensor, ids_restore: torch.Tensor) -> dict:
    """A call's sizes in ``make_inputs``' vocabulary."""
    return dict(n=x.shape[0], length=ids_restore.shape[1], keep=x.shape[1] - 1, dd=x.shape[2])


def shape_class(shape: dict) -> str:
    """The dispatch records' class of a shape: the batch rounded up to a power of two, the rest exact."""
    return f"n{pow2_bucket(shape['n'])}-l{shape['length']}-keep{shape['keep']}-dd{shape['dd']}"


def make_inputs(shape: dict, device: torch.device, dtype: torch.dtype, requires_grad: bool) -> tuple:
    """Random (x, mask_token, ids_restore, pos_embed) of ``shape``; ``GRAD_ARGNUMS`` need gradients."""
    n, length, keep, dd = shape["n"], shape["length"], shape["keep"], shape["dd"]
    x = torch.randn(n, 1 + keep, dd, device=device, dtype=dtype, requires_grad=requires_grad)
    mask_token = (0.02 * torch.randn(dd, device=device)).to(dtype).requires_grad_(requires_grad)
    pos = torch.randn(1 + length, dd, device=device, dtype=dtype)  # frozen, as in MAE
    _, ids_restore, _ = masking_indices(torch.rand(n, length, device=device), keep)
    return x, mask_token, ids_restore, pos


# ---------------------------------------------------------------------------------------------- public op
def decoder_unshuffle(
    x: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    """Unshuffle the decoder-embedded tokens into patch order, fill the mask tokens and add positions.

    ``out[n, 0] = x[n, 0] + pos_embed[0]``; ``out[n, 1 + l] = x[n, 1 + r] + pos_embed[1 + l]`` when
    ``r = ids_restore[n, l] < L_keep``, else ``mask_token + pos_embed[1 + l]``: the input of the decoder blocks
    in ``forward_decoder``.

    Args:
        x: (N, 1 + L_keep, Dd) decoder-embedded latent: CLS first, then the kept tokens in shuffled order.
        mask_token: (Dd,) the learned mask token (``model.mask_token.view(-1)``).
        ids_restore: (N, L) int64, per sample a permutation of 0..L-1 that undoes the shuffle (MAE's
            ``argsort(ids_shuffle)``, e.g. from ``ops.masking.masking_indices``).
        pos_embed: (1 + L, Dd) decoder positional embedding, CLS row first (``model.decoder_pos_embed[0]``).

    Returns:
        (N, 1 + L, Dd) in ``promote_types(x, mask_token, pos_embed)``, equal to the model's path bit for bit.

    Gradients flow to x (exact), mask_token and pos_embed (fp32 sums), each only when needed.
    """
    if x.dim() != 3 or ids_restore.dim() != 2 or ids_restore.shape[0] != x.shape[0]:
        raise ValueError(f"decoder_unshuffle: expected x (N, 1 + L_keep, Dd) and ids_restore (N, L), got "
                         f"{tuple(x.shape)} and {tuple(ids_restore.shape)}")
    _, t, dd = x.shape
    length = ids_restore.shape[1]
    if not 1 <= t <= 1 + length or mask_token.shape != (dd,) or pos_embed.shape != (1 + length, dd):
        raise ValueError(f"decoder_unshuffle: need 1 ≤ 1 + L_keep ≤ 1 + L = {1 + length} tokens, mask_token "
                         f"({dd},) and pos_embed ({1 + length}, {dd}); got x {tuple(x.shape)}, mask_token "
                         f"{tuple(mask_token.shape)}, pos_embed {tuple(pos_embed.shape)}")
    supported = {x.dtype, mask_token.dtype, pos_embed.dtype} <= set(SUPPORTED_DTYPES) and (
        ids_restore.dtype == torch.int64
    )
    reason = (f"needs float32/float16/bfloat16 x, mask_token, pos_embed and int64 ids_restore; got {x.dtype}, "
              f"{mask_token.dtype}, {pos_embed.dtype}, {ids_restore.dtype}")
    shape = shape_of(x, ids_restore)
    if not use_triton("decoder_unshuffle", x, mask_token, ids_restore, pos_embed, supported=supported,
                      reason=reason, dtype=x.dtype, shape=shape, shape_class=shape_class(shape)):
        return decoder_unshuffle_ref(x, mask_token, ids_restore, pos_embed)
    return decoder_unshuffle_fwd(x, mask_token, ids_restore, pos_embed)
