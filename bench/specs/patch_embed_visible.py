"""Benchmark entry for ``patch_embed_visible``: MAE's encoder input (patch conv + pos_embed + gather of the
visible patches), fused into one kernel that only embeds the kept patches."""

from __future__ import annotations

import torch

from mimir_fast.models_mae import masking_indices
from mimir_fast.ops.patch_embed_visible import patch_embed_visible

from ..registry import OpSpec
from .common import standard_providers


def _dims(shape: dict) -> tuple[int, int, int, int]:
    """M = N·L_keep kept rows, K = C·p², D and the image's element count N·C·px²."""
    m, k = shape["n"] * shape["keep"], shape["c"] * shape["p"] ** 2
    return m, k, shape["d"], shape["n"] * shape["c"] * shape["px"] ** 2


def _inputs(shape: dict, device: torch.device, dtype: torch.dtype, requires_grad: bool) -> tuple:
    n, c, px, p, d = shape["n"], shape["c"], shape["px"], shape["p"], shape["d"]
    length = (px // p) ** 2
    imgs = torch.rand(n, c, px, px, device=device, dtype=dtype, requires_grad=requires_grad)
    weight = (torch.randn(d, c, p, p, device=device) / (c * p * p) ** 0.5).to(dtype).requires_grad_(requires_grad)
    bias = torch.zeros(d, device=device, dtype=dtype, requires_grad=requires_grad)
    pos = torch.randn(length, d, device=device, dtype=dtype)  # frozen, as in MAE
    ids_keep, _, _ = masking_indices(torch.rand(n, length, device=device), shape["keep"])
    return imgs, weight, bias, pos, ids_keep


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
    shapes={
        "tiny": dict(n=4, c=3, px=16, p=4, d=40, keep=4),
        "vit_b_224_b256": dict(n=256, c=3, px=224, p=16, d=768, keep=49),  # ViT-B/16, 75% masking
        "vit_s_224_b256": dict(n=256, c=3, px=224, p=16, d=384, keep=49),  # ViT-S/16, 75% masking
        "cifar_p2_b256": dict(n=256, c=3, px=32, p=2, d=384, keep=64),  # MIMIR CIFAR-10 ViT-S, patch 2
    },
    make_inputs=_inputs,
    providers=standard_providers(patch_embed_visible),
    flops=_flops,
    bytes=_bytes,
    grad_argnums=(0, 1, 2),
)
