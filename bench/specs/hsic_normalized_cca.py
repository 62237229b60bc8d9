"""Benchmark entry for ``hsic_normalized_cca`` (MIMIR's HSIC penalty): the Gram matrices plus the solve."""

from __future__ import annotations

import torch

from mimir_fast.ops import hsic_normalized_cca

from ..registry import OpSpec
from .common import forced


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
    shapes={
        "tiny": dict(m=32, tokens=17, dim=64, px=16),
        "cifar10_vit_s": dict(m=128, tokens=65, dim=384, px=32),  # MIMIR CIFAR-10, patch 2, per-GPU batch
        "imagenet_vit_b_b256": dict(m=256, tokens=50, dim=768, px=224),
        "imagenet_vit_b_b512": dict(m=512, tokens=50, dim=768, px=224),  # MIMIR ImageNet per-GPU batch
    },
    make_inputs=_inputs,
    providers={
        "ref": lambda: forced("torch", hsic_normalized_cca),
        "ref_compiled": lambda: forced("torch", torch.compile(hsic_normalized_cca)),
        "triton": lambda: forced("triton", hsic_normalized_cca),
    },
    flops=_flops,
)
