"""Benchmark entry for ``hsic_gram``: both right-centered Gaussian kernel matrices of MIMIR's HSIC (the Gram
GEMMs, the RBF and the centering), without the solve of ``hsic_normalized_cca``."""

from __future__ import annotations

import torch

from mimir_fast.ops.hsic_gram import GRAD_ARGNUMS, SHAPES, hsic_gram, make_inputs

from ..registry import OpSpec
from .common import standard_providers


def _dims(shape: dict) -> tuple[int, int, int]:
    """m, dx = (1 + L_keep)·D latent columns, dy = 3·px² pixel columns."""
    return shape["m"], shape["dx"], shape["dy"]


def _flops(shape: dict, mode: str) -> float:
    """The dense-equivalent Gram GEMMs, 2·m²·d per variable: 2·m²·(dx + dy). The kernel computes only the
    lower-triangle tiles and mirrors them, so it does about half of this (nt(nt+1)/2 of nt² tiles of 64); the
    formula counts the dense work, which is what the reference does, so the TFLOP/s of the kernel read as
    "dense-equivalent". The O(m²) RBF and centering are not counted. The backward adds the Laplacian GEMM
    ``lap @ x`` (2·m²·dx; only x needs a gradient)."""
    m, dx, dy = _dims(shape)
    fwd = 2.0 * m * m * (dx + dy)
    return fwd if mode == "fwd" else fwd + 2.0 * m * m * dx


def _bytes(shape: dict, mode: str, dtype: torch.dtype) -> float:
    """Forward, at least: read x and y once, write the (2, m, m) fp32 output. The kernel also writes the
    (2, m, m) fp32 signed distances for the backward and an fp32 split-K workspace (both L2-sized), not counted.
    Backward, at least: read dL/dout (2m² fp32) and x again, write dx."""
    m, dx, dy = _dims(shape)
    s = torch.finfo(dtype).bits // 8
    fwd = s * m * (dx + dy) + 4 * 2 * m * m
    return fwd if mode == "fwd" else fwd + 4 * 2 * m * m + 2 * s * m * dx


SPEC = OpSpec(
    name="hsic_gram",
    shapes=SHAPES,
    make_inputs=make_inputs,
    providers=standard_providers(hsic_gram),
    flops=_flops,
    bytes=_bytes,
    grad_argnums=GRAD_ARGNUMS,
)
