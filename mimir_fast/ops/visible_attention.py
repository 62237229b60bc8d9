"""Non-causal multi-head self-attention on the fixed-length visible token set (the ViT/MAE blocks' attention).

    o = softmax(q kᵀ · hd^-0.5) v        q, k, v, o: (N, H, T, hd)

T is fixed per configuration (1 + 49 visible tokens for ViT-B/16 at 75 % masking, 197 in the decoder, 65 or
257 for CIFAR with patch 2), so there is no padding mask and no varlen metadata.

Three implementations:

- ``visible_attention_ref``: the explicit math in float32 (nanoGPT's manual attention), the semantics the
  kernel is tested against;
- ``F.scaled_dot_product_attention(q, k, v)``: what the models ran before this op existed, and still run
  whenever the kernel does not (the non-kernel path must stay bit-identical to it);
- the Triton FlashAttention-2 kernel in ``mimir_fast.kernels.visible_attention``, registered as the custom ops
  ``mimir_fast::visible_attention_fwd`` / ``_bwd`` so ``torch.compile`` traces through it.

Which one ``visible_attention`` runs (``MIMIR_FAST_KERNELS``, see ``_dispatch``):

- ``torch``: ``F.scaled_dot_product_attention(q, k, v)``, torch's own backend choice;
- ``triton``: the kernel (an error if it cannot run the call);
- ``auto`` (default): on CUDA, the fastest backend for the call's shape class, the "fastest backend" table:
  the dispatch record of the class (``_dispatch.choose``) names the Triton kernel or one SDPA backend when it
  was validated against float64 and timed faster than the plain SDPA call; the plain SDPA call otherwise
  (no record, slower, off CUDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import REFERENCE, TRITON, choose, pow2_bucket

MAX_HEAD_DIM = 128
"""Largest head dimension the kernel supports (``mimir_fast.kernels.visible_attention.MAX_HEAD_DIM``)."""

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

SDPA_BACKENDS = {
    "sdpa_flash": "FLASH_ATTENTION",
    "sdpa_cudnn": "CUDNN_ATTENTION",
    "sdpa_efficient": "EFFICIENT_ATTENTION",
    "sdpa_math": "MATH",
}
"""The candidate names of the SDPA backends -> their ``torch.nn.attention.SDPBackend`` member. They match the
benchmark providers of the same names (bench/specs/visible_attention.py)."""

BACKENDS = ("triton", *SDPA_BACKENDS)
"""The candidates of the fastest-backend table: the Triton kernel and every SDPA backend."""

SHAPES = {
    "tiny": dict(n=2, h=2, t=17, hd=8),
    "vit_b_enc_b256": dict(n=256, h=12, t=50, hd=64),  # ViT-B/16 encoder, 224 px, 75 % masked: 1 + 49 tokens
    "vit_s_enc_b256": dict(n=256, h=6, t=50, hd=64),  # ViT-S/16 encoder, same tokens
    "mimir_dec_b256": dict(n=256, h=16, t=197, hd=8),  # MIMIR decoder: 128 wide, 16 heads, 1 + 196 tokens
    "mae_dec_b256": dict(n=256, h=16, t=197, hd=32),  # MAE decoder: 512 wide, 16 heads
    "cifar_p2": dict(n=256, h=6, t=65, hd=64),  # ViT-S, CIFAR 32 px, patch 2: 1 + 64 of 256 patches
    "vit_h_enc_b64": dict(n=64, h=16, t=65, hd=80),  # ViT-H/14 encoder, 224 px, 75 % masked: 1 + 64 tokens
    "hd128_b64": dict(n=64, h=8, t=65, hd=128),  # the largest head dimension the kernel takes
}
"""Named shapes: N samples, H heads, T tokens, head width hd. ``tiny`` is for the CPU."""

GRAD_ARGNUMS = (0, 1, 2)
"""Inputs of ``make_inputs`` that take gradients: q, k and v."""


def shape_of(q: torch.Tensor) -> dict:
    """A call's sizes in ``make_inputs``' vocabulary."""
    n, h, t, hd = q.shape
    return dict(n=n, h=h, t=t, hd=hd)


def shape_class(shape: dict) -> str:
    """The dispatch records' class of a shape: N·H rounded up to a power of two, hd to one ≥ 8, T to one ≥ 16.
    E.g. the ViT-B/16 encoder at 75 % masking, (256, 12, 50, 64) -> ``"nh4096-hd64-t64"``."""
    return f"nh{pow2_bucket(shape['n'] * shape['h'])}-hd{pow2_bucket(shape['hd'], 8)}-t{pow2_bucket(shape['t'], 16)}"


def make_inputs(shape: dict, device: torch.device, dtype: torch.dtype, requires_grad: bool) -> tuple:
    """q, k, v as the model makes them: views of one (N, T, 3, H, hd) tensor permuted to (3, N, H, T, hd)."""
    n, h, t, hd = shape["n"], shape["h"], shape["t"], shape["hd"]
    qkv = torch.randn(n, t, 3, h, hd, device=device, dtype=dtype, requires_grad=requires_grad)
    return tuple(qkv.permute(2, 0, 3, 1, 4).unbind(0))  # q, k, v: (N, H, T, hd) each


def visible_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The explicit math: scores, softmax and weighted sum in float32 (float64 for float64 inputs).

    Args:
        q, k, v: (N, H, T, hd) queries, keys and values, any float dtype and device.

    Returns:
        (N, H, T, hd) in the input dtype.
    """
    out_dtype = q.dtype
    dtype = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (N, H, T, T)
    att = att.softmax(dim=-1)
    return (att @ v).to(out_dtype)  # (N, H, T, hd)


# --- the Triton kernel as custom ops (the forward also returns the softmax statistics for the backward) ------


@torch.library.custom_op("mimir_fast::visible_attention_fwd", mutates_args=())
def visible_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel forward: o (N, H, T, hd) as a view of an (N, T, H, hd) buffer; stats (2, N, H, T) float32, the
    row max of the scaled scores and the log of the row sum of their exponentials (``stats.sum(0)`` = logsumexp)."""
    from mimir_fast.kernels import visible_attention as kernel

    return kernel.visible_attention_fwd(q, k, v)


@visible_attention_fwd.register_fake
def _(q, k, v):
    n, h, t, d = q.shape
    return q.new_empty((n, t, h, d)).permute(0, 2, 1, 3), q.new_empty((2, n, h, t), dtype=torch.float32)


@torch.library.custom_op("mimir_fast::visible_attention_bwd", mutates_args=())
def visible_attention_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, stats: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel backward: dq, dk, dv (N, H, T, hd), contiguous."""
    from mimir_fast.kernels import visible_attention as kernel

    # Autograd may hand over an expanded (stride-0) gradient; the kernel needs a dense head dimension.
    do = do if do.stride(-1) == 1 else do.contiguous()
    return kernel.visible_attention_bwd(do, q, k, v, o, stats)


@visible_attention_bwd.register_fake
def _(do, q, k, v, o, stats):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v = inputs
    o, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.save_for_backward(q, k, v, o, stats)


def _backward(ctx, do, _dstats):
    q, k, v, o, stats = ctx.saved_tensors
    return visible_attention_bwd(do, q, k, v, o, stats)


visible_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# --- the public op ------------------------------------------------------------------------------------------


def sdpa_backend(backend: str):
    """SDPA restricted to one backend (an ``SDPA_BACKENDS`` name), with no fallback: it raises where that backend
    cannot run a call (e.g. flash attention on float32). The candidates the dispatch check times."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    member = getattr(SDPBackend, SDPA_BACKENDS[backend])

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel([member]):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _sdpa_with(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA restricted to one backend, with MATH allowed as the fallback: torch tries the named backend first
    (its priority order puts MATH last), so a call the measured backend cannot take still runs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[backend]), SDPBackend.MATH]):
        return F.scaled_dot_product_attention(q, k, v)


def visible_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal multi-head attention ``softmax(q kᵀ · hd^-0.5) v`` over all T tokens.

    Args:
        q: (N, H, T, hd) queries; any strides (e.g. a view of ``qkv.permute(2, 0, 3, 1, 4)``).
        k: (N, H, T, hd) keys, same dtype.
        v: (N, H, T, hd) values, same dtype.

    Returns:
        (N, H, T, hd) in the input dtype (the autocast dtype under autocast, as SDPA). The kernel's output is
        a view of an (N, T, H, hd) buffer, so ``o.transpose(1, 2).reshape(N, T, H * hd)`` does not copy.

    The kernel runs under ``MIMIR_FAST_KERNELS=triton``, or under ``auto`` where this shape class's dispatch
    record picks it on CUDA; every other call is ``F.scaled_dot_product_attention(q, k, v)``, under the SDPA
    backend the record picks if any (module docstring).
    """
    dtype, autocast = q.dtype, torch.is_autocast_enabled(q.device.type)
    if autocast:  # what SDPA does under autocast: run in the autocast dtype
        dtype = torch.get_autocast_dtype(q.device.type)
    supported = (
        q.dim() == 4 and k.shape == q.shape and v.shape == q.shape and q.shape[2] >= 1
        and 1 <= q.shape[-1] <= MAX_HEAD_DIM and dtype in SUPPORTED_DTYPES
        and (autocast or k.dtype == v.dtype == q.dtype)
    )
    reason = "" if supported else (
        f"needs q, k, v of one (N, H, T, hd) shape with hd ≤ {MAX_HEAD_DIM} and one dtype among "
        f"{SUPPORTED_DTYPES}; got {tuple(q.shape)} {q.dtype}, {tuple(k.shape)} {k.dtype}, "
        f"{tuple(v.shape)} {v.dtype}"
    )
    shape = shape_of(q) if q.dim() == 4 else {}
    backend = choose("visible_attention", q, k, v, supported=supported, reason=reason, dtype=dtype, shape=shape,
                     shape_class=shape_class(shape) if shape else "")
    if backend == TRITON:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        return visible_attention_fwd(q, k, v)[0]
    if backend != REFERENCE:
        return _sdpa_with(backend, q, k, v)
    return F.scaled_dot_product_attention(q, k, v)
