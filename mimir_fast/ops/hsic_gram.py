"""The right-centered Gaussian kernel matrices of MIMIR's HSIC, both variables at once.

``hsic_gram(x, y, σ)`` is ``torch.stack([gaussian_kernel_centered(x, σ), gaussian_kernel_centered(y, σ)])``
(defined here; mimir_fast/ops/hsic.py re-exports it): for each variable a (m, d),
``K_ij = exp(−|‖a_i‖² + ‖a_j‖² − 2 a_i·a_j| / 2σ²d)`` right-centered, ``K − rowmean(K)``, computed as
``e − rowmean(e)`` with ``e = expm1(…) = K − 1``.

On the GPU it runs the Triton kernels of ``mimir_fast.kernels.hsic_gram``: one split-K launch computes the
lower-triangle tiles of both Gram matrices (half the GEMM work), a second one turns them into the centered
kernels; the backward is a Laplacian-times-input GEMM. They are registered as the custom ops
``mimir_fast::hsic_gram_fwd`` / ``_bwd`` so ``torch.compile`` traces them. The output is float32 for
float32/float16/bfloat16 inputs (inputs are upcast, as in ``hsic_normalized_cca``); float64 runs the reference.
"""

from __future__ import annotations

import torch

from ._dispatch import pow2_bucket, use_triton

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_M = 1024
"""Largest sample count of the kernel (``mimir_fast.kernels.hsic_gram.MAX_M``)."""
MAX_D = 2**31 - 1
"""Largest width of a variable in the kernel (``mimir_fast.kernels.hsic_gram.MAX_D``)."""


def gaussian_kernel_centered(a: torch.Tensor, sigma: float) -> torch.Tensor:
    """The right-centered Gaussian kernel matrix ``K H`` of the rows of ``a``.

    Args:
        a: (m, d) samples (float32 or float64).
        sigma: bandwidth factor; the kernel width is ``2 σ² d``.

    Returns:
        (m, m) in ``a``'s dtype: ``K_ij − mean_k K_ik``.
    """
    m, d = a.shape
    sq = (a * a).sum(dim=1, keepdim=True)  # (m, 1)
    dist = (sq - 2 * (a @ a.T) + sq.T).abs()  # (m, m)
    e = torch.expm1(-dist / (2.0 * sigma * sigma * d))  # K − 1, exact where K ≈ 1
    return e - e.mean(dim=1, keepdim=True)  # = K − mean(K): the constant cancels


def hsic_gram_ref(x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """The two centered kernel matrices of ``hsic_normalized_cca``, in float32 (float64 if an input is).

    Args:
        x: (m, dx) first variable, flattened per sample.
        y: (m, dy) second variable, flattened per sample.
        sigma: bandwidth factor σ; each variable's kernel width is 2σ²d with its own d.

    Returns:
        (2, m, m): ``[gaussian_kernel_centered(x, σ), gaussian_kernel_centered(y, σ)]``.
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    return torch.stack(
        [gaussian_kernel_centered(x.to(dtype), sigma), gaussian_kernel_centered(y.to(dtype), sigma)]
    )


# ---------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("mimir_fast::hsic_gram_fwd", mutates_args=())
def hsic_gram_fwd(x: torch.Tensor, y: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, r): the centered kernels and the signed squared distances, both (2, m, m) float32."""
    from mimir_fast.kernels import hsic_gram as kernels

    return kernels.hsic_gram_fwd(x.contiguous(), y.contiguous(), sigma)


@hsic_gram_fwd.register_fake
def _(x, y, sigma):
    m = x.shape[0]
    out = x.new_empty((2, m, m), dtype=torch.float32)
    return out, torch.empty_like(out)


@torch.library.custom_op("mimir_fast::hsic_gram_bwd", mutates_args=())
def hsic_gram_bwd(
    grad: torch.Tensor, r: torch.Tensor, x: torch.Tensor, y: torch.Tensor, sigma: float, need_x: bool, need_y: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dy) in x's and y's dtypes; an empty (0,) tensor for a variable that needs no gradient."""
    from mimir_fast.kernels import hsic_gram as kernels

    return kernels.hsic_gram_bwd(grad.contiguous(), r.contiguous(), x.contiguous(), y.contiguous(), sigma,
                                 need_x, need_y)


@hsic_gram_bwd.register_fake
def _(grad, r, x, y, sigma, need_x, need_y):
    return x.new_empty(x.shape if need_x else (0,)), y.new_empty(y.shape if need_y else (0,))


def _setup_context(ctx, inputs, output):
    x, y, sigma = inputs
    _, r = output
    ctx.mark_non_differentiable(r)
    ctx.save_for_backward(x, y, r)
    ctx.sigma = sigma


def _backward(ctx, grad_out, _grad_r):
    x, y, r = ctx.saved_tensors
    need_x, need_y = ctx.needs_input_grad[:2]
    if not (need_x or need_y):
        return None, None, None
    dx, dy = hsic_gram_bwd(grad_out.contiguous(), r, x, y, ctx.sigma, need_x, need_y)
    return (dx if need_x else None), (dy if need_y else None), None


hsic_gram_fwd.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------- shapes (dispatch check, benchmarks)
SIGMA = 5.0
"""MIMIR's bandwidth factor, used by ``make_inputs``."""

HSIC_SHAPES = {
    "tiny": dict(m=32, tokens=17, dim=64, px=16),
    "cifar10_vit_s": dict(m=128, tokens=65, dim=384, px=32),  # MIMIR CIFAR-10, patch 2, per-GPU batch
    "imagenet_vit_b_b256": dict(m=256, tokens=50, dim=768, px=224),
    "imagenet_vit_b_b512": dict(m=512, tokens=50, dim=768, px=224),  # MIMIR ImageNet per-GPU batch
}
"""MIMIR's HSIC inputs: m samples of a (tokens, dim) latent and of a 3 × px × px image (also used by the
``hsic_normalized_cca`` benchmark). ``tiny`` is for the CPU."""

SHAPES = {name: dict(m=s["m"], dx=s["tokens"] * s["dim"], dy=3 * s["px"] ** 2) for name, s in HSIC_SHAPES.items()}
"""``HSIC_SHAPES`` as ``hsic_gram``'s (m, dx, dy)."""

GRAD_ARGNUMS = (0,)
"""Inputs of ``make_inputs`` that take gradients: the latent x; the images y do not (MIMIR's training)."""


def shape_of(x: torch.Tensor, y: torch.Tensor) -> dict:
    """A call's sizes in ``make_inputs``' vocabulary."""
    return dict(m=x.shape[0], dx=x.shape[1], dy=y.shape[1])


def shape_class(shape: dict) -> str:
    """The dispatch records' class of a shape: m rounded up to a power of two, the widths exact."""
    return f"m{pow2_bucket(shape['m'])}-dx{shape['dx']}-dy{shape['dy']}"


def make_inputs(shape: dict, device: torch.device, dtype: torch.dtype, requires_grad: bool) -> tuple:
    """A latent-like x ~ N(0, 1) (m, dx), pixel-like y ~ U[0, 1) (m, dy) and σ; ``GRAD_ARGNUMS`` need gradients."""
    x = torch.randn(shape["m"], shape["dx"], device=device, dtype=dtype, requires_grad=requires_grad)
    y = torch.rand(shape["m"], shape["dy"], device=device, dtype=dtype)
    return x, y, SIGMA


# ---------------------------------------------------------------------------------------------- public op
def hsic_gram(x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """The right-centered Gaussian kernel matrices of both HSIC variables.

    Args:
        x: (m, dx) first variable flattened per sample, e.g. the latent (m, (1 + L_keep)·D).
        y: (m, dy) second variable flattened per sample, e.g. the images (m, 3·H·W).
        sigma: bandwidth factor σ (MIMIR: 5); the kernel width of a variable is 2σ²d with its own d.

    Returns:
        (2, m, m) float32 (float64 if an input is float64), ``out[0]`` for x and ``out[1]`` for y, each
        ``K − rowmean(K)``; differentiable with respect to x and y.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"hsic_gram: expected x (m, dx) and y (m, dy), got {tuple(x.shape)} and {tuple(y.shape)}")
    m = x.shape[0]
    supported = (x.dtype in SUPPORTED_DTYPES and y.dtype in SUPPORTED_DTYPES and 2 <= m <= MAX_M
                 and 0 < x.shape[1] <= MAX_D and 0 < y.shape[1] <= MAX_D)
    reason = (f"needs float32/float16/bfloat16 inputs, 2 ≤ m ≤ {MAX_M} and 1 ≤ d ≤ {MAX_D} columns; got "
              f"{x.dtype} {tuple(x.shape)} and {y.dtype} {tuple(y.shape)}")
    shape = shape_of(x, y)
    if not use_triton("hsic_gram", x, y, supported=supported, reason=reason, dtype=x.dtype, shape=shape,
                      shape_class=shape_class(shape)):
        return hsic_gram_ref(x, y, sigma)
    out, _ = hsic_gram_fwd(x, y, float(sigma))
    return out
