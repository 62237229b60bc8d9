"""Benchmark entry for ``decoder_unshuffle``: MAE's decoder input (unshuffle the visible tokens, fill the mask
tokens, add the positional embedding) from one kernel instead of cat + gather + cat + add."""

from __future__ import annotations

import torch

from mimir_fast.ops.decoder_unshuffle import GRAD_ARGNUMS, SHAPES, decoder_unshuffle, make_inputs

from ..registry import OpSpec
from .common import standard_providers


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
    shapes=SHAPES,
    make_inputs=make_inputs,
    providers=standard_providers(decoder_unshuffle),
    bytes=_bytes,
    grad_argnums=GRAD_ARGNUMS,
)
