"""Benchmark entry for ``decoder_unshuffle``: MAE's decoder input (unshuffle the visible tokens, fill the mask
tokens, add the positional embedding) from one kernel instead of cat + gather + cat + add."""

from __future__ import annotations

import torch

from mimir_fast.models_mae import masking_indices
from mimir_fast.ops.decoder_unshuffle import decoder_unshuffle

from ..registry import OpSpec
from .common import standard_providers


def _inputs(shape: dict, device: torch.device, dtype: torch.dtype, requires_grad: bool) -> tuple:
    n, length, keep, dd = shape["n"], shape["length"], shape["keep"], shape["dd"]
    x = torch.randn(n, 1 + keep, dd, device=device, dtype=dtype, requires_grad=requires_grad)
    mask_token = (0.02 * torch.randn(dd, device=device)).to(dtype).requires_grad_(requires_grad)
    pos = torch.randn(1 + length, dd, device=device, dtype=dtype)  # frozen, as in MAE
    _, ids_restore, _ = masking_indices(torch.rand(n, length, device=device), keep)
    return x, mask_token, ids_restore, pos


def _bytes(shape: dict, mode: str, dtype: torch.dtype) -> float:
    """Forward: read the visible tokens N·(1 + L_keep)·Dd, the mask token Dd, the positional embedding
    (1 + L)·Dd and ids_restore (N·L int64), write the output N·(1 + L)·Dd. Backward, at least: read the
    output gradient N·(1 + L)·Dd and ids_restore again, write grad_x N·(1 + L_keep)·Dd and the mask-token
    gradient Dd (pos_embed is frozen; the fp32 partials of the reduction are overhead, not counted)."""
    n, length, keep, dd = shape["n"], shape["length"], shape["keep"], shape["dd"]
    s = torch.finfo(dtype).bits // 8
    fwd = s * (n * (1 + keep) * dd + dd + (1 + length) * dd + n * (1 + length) * dd) + 8 * n * length
    bwd = s * (n * (1 + length) * dd + n * (1 + keep) * dd + dd) + 8 * n * length
    return fwd if mode == "fwd" else fwd + bwd


SPEC = OpSpec(
    name="decoder_unshuffle",
    shapes={
        "tiny": dict(n=4, length=16, keep=4, dd=40),
        "mimir_224_b256": dict(n=256, length=196, keep=49, dd=128),  # MIMIR decoder (128 wide), 224/16, 75%
        "mae_224_b256": dict(n=256, length=196, keep=49, dd=512),  # MAE decoder (512 wide), 224/16, 75%
        "cifar_p2_b256": dict(n=256, length=256, keep=64, dd=128),  # MIMIR CIFAR-10, patch 2, 75%
    },
    make_inputs=_inputs,
    providers=standard_providers(decoder_unshuffle),
    bytes=_bytes,
    grad_argnums=(0, 1),
)
