"""Benchmark entry for ``visible_attention``: attention over the fixed-length visible token set.

Providers: ``ref`` (the op's non-kernel path, ``F.scaled_dot_product_attention`` with torch's own backend
choice), ``ref_compiled`` (the same under ``torch.compile``), ``triton`` (our kernel), one provider per SDPA
backend (``sdpa_flash``, ``sdpa_cudnn``, ``sdpa_efficient``, ``sdpa_math``: SDPA restricted to that backend;
a backend that cannot take a shape or dtype raises, and the runner records the error) and ``xformers`` when
xformers is installed. ``mimir-fast doctor`` and the in-run dispatch check time the same candidates (the kernel
and the SDPA backends) to choose the fastest per shape class (mimir_fast/ops/visible_attention.py).

Inputs are q, k, v as the model makes them: views of one (N, T, 3, H, hd) tensor permuted to (3, N, H, T, hd).
"""

from __future__ import annotations

import importlib.util

import torch

from mimir_fast.ops.visible_attention import (
    GRAD_ARGNUMS,
    SDPA_BACKENDS,
    SHAPES,
    make_inputs,
    sdpa_backend,
    visible_attention,
)

from ..registry import OpSpec
from .common import standard_providers


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


def _xformers():
    """xformers' memory-efficient attention, which takes (N, T, H, hd): the transposes are views."""
    import xformers.ops as xops

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        return xops.memory_efficient_attention(q, k, v).transpose(1, 2)

    return run


_PROVIDERS = {
    **standard_providers(visible_attention),
    **{name: (lambda name=name: sdpa_backend(name)) for name in SDPA_BACKENDS},
}
if importlib.util.find_spec("xformers") is not None:
    _PROVIDERS["xformers"] = _xformers

SPEC = OpSpec(
    name="visible_attention",
    shapes=SHAPES,
    make_inputs=make_inputs,
    providers=_PROVIDERS,
    flops=_flops,
    bytes=_bytes,
    grad_argnums=GRAD_ARGNUMS,
)
