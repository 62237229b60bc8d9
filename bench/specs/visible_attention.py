"""Benchmark entry for ``visible_attention``: attention over the fixed-length visible token set.

Providers: ``ref`` (the op's non-kernel path, ``F.scaled_dot_product_attention`` with torch's own backend
choice), ``ref_compiled`` (the same under ``torch.compile``), ``triton`` (our kernel), one provider per SDPA
backend (``sdpa_flash``, ``sdpa_cudnn``, ``sdpa_efficient``, ``sdpa_math``: SDPA restricted to that backend;
a backend that cannot take a shape or dtype raises, and the runner records the error) and ``xformers`` when
xformers is installed. The fwdbwd medians per shape class fill ``FASTEST_BACKEND`` in
mimir_fast/ops/visible_attention.py.

Inputs are q, k, v as the model makes them: views of one (N, T, 3, H, hd) tensor permuted to (3, N, H, T, hd).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from mimir_fast.ops.visible_attention import SDPA_BACKENDS, visible_attention

from ..registry import OpSpec
from .common import standard_providers


def _inputs(shape: dict, device: torch.device, dtype: torch.dtype, requires_grad: bool) -> tuple:
    n, h, t, hd = shape["n"], shape["h"], shape["t"], shape["hd"]
    qkv = torch.randn(n, t, 3, h, hd, device=device, dtype=dtype, requires_grad=requires_grad)
    return tuple(qkv.permute(2, 0, 3, 1, 4).unbind(0))  # q, k, v: (N, H, T, hd) each


def _flops(shape: dict, mode: str) -> float:
    """FlashAttention's count (benchmarks/benchmark_flash_attention.py), non-causal: the forward is two
    (T × hd) · (hd × T)-sized matmuls per head, ``Q Kᵀ`` and ``P V``, 2·T²·hd each: 4·N·H·T²·hd. The backward
    is five (recompute ``Q Kᵀ``, ``dV = Pᵀ dO``, ``dP = dO Vᵀ``, ``dQ = dS K``, ``dK = dSᵀ Q``): 2.5× the forward,
    so fwdbwd is 3.5× it. Softmax exponentials are not counted."""
    fwd = 4 * shape["n"] * shape["h"] * shape["t"] ** 2 * shape["hd"]
    return fwd if mode == "fwd" else 3.5 * fwd


def _bytes(shape: dict, mode: str, dtype: torch.dtype) -> float:
    """The least an implementation must move, in tensors of N·H·T·hd elements: the forward reads q, k, v and
    writes o (4); the backward reads q, k, v, o (for ``rowsum(dO ∘ O)``) and dO and writes dq, dk, dv (8),
    so fwdbwd moves 12. The float32 softmax statistics (a few bytes per row) are left out."""
    tensor = shape["n"] * shape["h"] * shape["t"] * shape["hd"] * torch.finfo(dtype).bits // 8
    return tensor * (4 if mode == "fwd" else 12)


def _sdpa(backend: str):
    """SDPA restricted to one backend (``SDPA_BACKENDS`` name -> ``SDPBackend`` member); raises where it cannot
    run, e.g. flash attention on float32."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    member = getattr(SDPBackend, SDPA_BACKENDS[backend])

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel([member]):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _xformers():
    """xformers' memory-efficient attention, which takes (N, T, H, hd): the transposes are views."""
    import xformers.ops as xops

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        return xops.memory_efficient_attention(q, k, v).transpose(1, 2)

    return run


_PROVIDERS = {
    **standard_providers(visible_attention),
    **{name: (lambda name=name: _sdpa(name)) for name in SDPA_BACKENDS},
}
if importlib.util.find_spec("xformers") is not None:
    _PROVIDERS["xformers"] = _xformers

SPEC = OpSpec(
    name="visible_attention",
    shapes={
        "tiny": dict(n=2, h=2, t=17, hd=8),
        "vit_b_enc_b256": dict(n=256, h=12, t=50, hd=64),  # ViT-B/16 encoder, 224 px, 75 % masked: 1 + 49 tokens
        "vit_s_enc_b256": dict(n=256, h=6, t=50, hd=64),  # ViT-S/16 encoder, same tokens
        "mimir_dec_b256": dict(n=256, h=16, t=197, hd=8),  # MIMIR decoder: 128 wide, 16 heads, 1 + 196 tokens
        "mae_dec_b256": dict(n=256, h=16, t=197, hd=32),  # MAE decoder: 512 wide, 16 heads
        "cifar_p2": dict(n=256, h=6, t=65, hd=64),  # ViT-S, CIFAR 32 px, patch 2: 1 + 64 of 256 patches
        "vit_h_enc_b64": dict(n=64, h=16, t=65, hd=80),  # ViT-H/14 encoder, 224 px, 75 % masked: 1 + 64 tokens
        "hd128_b64": dict(n=64, h=8, t=65, hd=128),  # the largest head dimension the kernel takes
    },
    make_inputs=_inputs,
    providers=_PROVIDERS,
    flops=_flops,
    bytes=_bytes,
    grad_argnums=(0, 1, 2),
)
