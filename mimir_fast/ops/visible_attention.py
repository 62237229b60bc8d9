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
- ``auto`` (default): on CUDA, the backend that ``FASTEST_BACKEND`` lists for the call's shape class; the
  plain SDPA call for a shape class it does not list, and always off CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import kernel_mode, use_triton

MAX_HEAD_DIM = 128
"""Largest head dimension the kernel supports (``mimir_fast.kernels.visible_attention.MAX_HEAD_DIM``)."""

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

SDPA_BACKENDS = {
    "sdpa_flash": "FLASH_ATTENTION",
    "sdpa_cudnn": "CUDNN_ATTENTION",
    "sdpa_efficient": "EFFICIENT_ATTENTION",
    "sdpa_math": "MATH",
}
"""The ``FASTEST_BACKEND`` values that name an SDPA backend -> their ``torch.nn.attention.SDPBackend`` member.
They match the benchmark providers of the same names (bench/specs/visible_attention.py)."""

BACKENDS = ("triton", *SDPA_BACKENDS)

FASTEST_BACKEND: dict[tuple[int, int, str], str] = {}
"""Shape class ``(head-dim bucket, T bucket, dtype name)`` (see ``shape_class``) -> the backend measured
fastest for it (fwd+bwd) on CUDA: ``"triton"`` or one of ``SDPA_BACKENDS``.

Filled by hand from the benchmark results in bench/results (``python -m bench.ops --op visible_attention``,
the fwdbwd median of each provider per shape), and only from them. Empty until GPU measurements exist: every
call under ``auto`` then runs the plain SDPA call, i.e. torch's own choice, exactly what the models ran before.
Example entry: ``(64, 64, "bfloat16"): "triton"`` for ViT-B at 50 visible tokens.
"""


def shape_class(q: torch.Tensor) -> tuple[int, int, str]:
    """The ``FASTEST_BACKEND`` key of a call: (hd rounded up to a power of two ≥ 8, T rounded up to a power of
    two ≥ 16, dtype name). E.g. ViT-B/16 encoder at 75 % masking, q (N, 12, 50, 64) bf16 -> (64, 64, "bfloat16")."""
    return shape_class_of(q.shape[-1], q.shape[-2], str(q.dtype).removeprefix("torch."))


def shape_class_of(hd: int, t: int, dtype: str) -> tuple[int, int, str]:
    """``shape_class`` from a head width, a token count and a dtype name (e.g. a benchmark record's)."""
    hd_bucket, t_bucket = 8, 16
    while hd_bucket < hd:
        hd_bucket *= 2
    while t_bucket < t:
        t_bucket *= 2
    return hd_bucket, t_bucket, dtype


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

    The kernel runs under ``MIMIR_FAST_KERNELS=triton``, or under ``auto`` where ``FASTEST_BACKEND`` lists it
    for this shape class on CUDA; every other call is ``F.scaled_dot_product_attention(q, k, v)``, under the
    SDPA backend ``FASTEST_BACKEND`` lists if any (module docstring).
    """
    mode = kernel_mode()
    backend = None
    if mode == "triton":
        backend = "triton"
    elif mode == "auto" and q.is_cuda:
        backend = FASTEST_BACKEND.get(shape_class(q))
    if backend == "triton":
        if torch.is_autocast_enabled(q.device.type):  # what SDPA does under autocast: run in the autocast dtype
            dtype = torch.get_autocast_dtype(q.device.type)
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        supported = (
            q.dim() == 4 and k.shape == q.shape and v.shape == q.shape and q.shape[2] >= 1
            and 1 <= q.shape[-1] <= MAX_HEAD_DIM and q.dtype in SUPPORTED_DTYPES and k.dtype == v.dtype == q.dtype
        )
        reason = "" if supported else (
            f"needs q, k, v of one (N, H, T, hd) shape with hd ≤ {MAX_HEAD_DIM} and one dtype among "
            f"{SUPPORTED_DTYPES}; got {tuple(q.shape)} {q.dtype}, {tuple(k.shape)} {k.dtype}, "
            f"{tuple(v.shape)} {v.dtype}"
        )
        if use_triton("visible_attention", q, k, v, supported=supported, reason=reason):
            return visible_attention_fwd(q, k, v)[0]
    elif backend in SDPA_BACKENDS:
        return _sdpa_with(backend, q, k, v)
    return F.scaled_dot_product_attention(q, k, v)
