"""Benchmark entry for ``patch_embed_visible``: MAE's encoder input (patch conv + pos_embed + gather of the
visible patches), fused into one kernel that only embeds the kept patches."""

from __future__ import annotations

import torch

from mimir_fast.ops.patch_embed_visible import GRAD_ARGNUMS, SHAPES, make_inputs, patch_embed_visible

from ..registry import OpSpec
from .common import standard_providers


def _dims(shape: dict) -> tuple[int, int, int, int]:
    """M = N·L_keep kept rows, K = C·p², D and the image's element count N·C·px²."""
    m, k = shape["n"] * shape["keep"], shape["c"] * shape["p"] ** 2
    return m, k, shape["d"], shape["n"] * shape["c"] * shape["px"] ** 2


def _flops(shape: dict, mode: str) -> float:
    """The forward is one (M × K) @ (K × D) GEMM over the kept rows only: 2·M·D·K, with M = N·L_keep and
    K = C·p². The backward adds the image gradient dy @ W and the weight gradient dyᵀ @ patches, the same
    GEMM size each (2·M·D·K); bias and pos_embed gradients are O(M·D) reductions, not counted."""
    m, k, d, _ = _dims(shape)
    fwd = 2.0 * m * d * k
    return fwd if mode == "fwd" else 3 * fwd


def _bytes(shape: dict, mode: str, dtype: torch.dtype) -> float:
    """Forward: read the kept pixels (M·K), the weight (D·K) and bias (D), the kept pos_embed rows (M·D) and
    ids_keep (M int64), write the tokens (M·D). Backward, at least: read dy (M·D), the weight and the kept
    pixels again, write the whole image gradient (N·C·px², zeros on the masked patches) and the weight and
    bias gradients."""
    m, k, d, pixels = _dims(shape)
    s = torch.finfo(dtype).bits // 8
    fwd = s * (m * k + d * k + d + m * d + m * d) + 8 * m
    bwd = s * (m * d + d * k + m * k + pixels + d * k + d)
    return fwd if mode == "fwd" else fwd + bwd


SPEC = OpSpec(
    name="patch_embed_visible",
    shapes=SHAPES,
    make_inputs=make_inputs,
    providers=standard_providers(patch_embed_visible),
    flops=_flops,
    bytes=_bytes,
    grad_argnums=GRAD_ARGNUMS,
)
