"""Benchmark entry for ``hsic_normalized_cca`` (MIMIR's HSIC penalty): the Gram matrices plus the solve."""

from __future__ import annotations

import torch

from mimir_fast.ops import hsic_normalized_cca

from ..registry import OpSpec
from .common import HSIC_SHAPES, standard_providers


def _inputs(shape: dict, device: torch.device, dtype: torch.dtype, requires_grad: bool) -> tuple:
    m = shape["m"]
    z = torch.randn(m, shape["tokens"], shape["dim"], device=device, dtype=dtype, requires_grad=requires_grad)
    x = torch.rand(m, 3, shape["px"], shape["px"], device=device, dtype=dtype)
    return z, x


def _flops(shape: dict, mode: str) -> float:
    """Two Gram matrices (2 m² d each), two LU factorisations (⅔ m³) and m-column solves (2 m³) per system;
    backward adds one m² × d_z GEMM and about the same solve work again."""
    m, dz, dx = shape["m"], shape["tokens"] * shape["dim"], 3 * shape["px"] ** 2
    fwd = 2 * m * m * (dz + dx) + 2 * (2 / 3 * m**3 + 2 * m**3)
    return fwd if mode == "fwd" else fwd + 2 * m * m * dz + 2 * (2 / 3 * m**3 + 2 * m**3)


SPEC = OpSpec(
    name="hsic_normalized_cca",
    shapes=HSIC_SHAPES,
    make_inputs=_inputs,
    providers=standard_providers(hsic_normalized_cca),
    flops=_flops,
)
