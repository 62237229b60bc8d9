"""One registry entry per op: named shapes, an input factory, the providers to time and a FLOP formula.

Providers: ``ref`` (the eager reference in ``mimir_fast.ops``) and ``ref_compiled`` (``torch.compile`` of it),
the two baselines every kernel is measured against; the kernel issue adds ``triton``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from mimir_fast.ops import hsic_normalized_cca


@dataclass(frozen=True)
class OpSpec:
    """A benchmarked op."""

    name: str
    """The op's name, the same in kernels/, mimir_fast/ops/, tests/ and here."""
    shapes: dict[str, dict]
    """Named shape configurations."""
    make_inputs: Callable[[dict, torch.device, bool], tuple]
    """(shape, device, requires_grad) -> positional inputs."""
    providers: dict[str, Callable[[], Callable]] = field(default_factory=dict)
    """Provider name -> a factory returning the callable to time."""
    flops: Callable[[dict, str], float] | None = None
    """(shape, mode) -> FLOPs of one call, for TFLOP/s."""
    grad_argnums: tuple[int, ...] = (0,)
    """Inputs that receive gradients in fwdbwd mode."""


def _hsic_inputs(shape: dict, device: torch.device, requires_grad: bool) -> tuple:
    m = shape["m"]
    z = torch.randn(m, shape["tokens"], shape["dim"], device=device, requires_grad=requires_grad)
    x = torch.rand(m, 3, shape["px"], shape["px"], device=device)
    return z, x


def _hsic_flops(shape: dict, mode: str) -> float:
    """Two Gram matrices (2 m² d each), two LU factorisations (⅔ m³) and m-column solves (2 m³) per system;
    backward adds one m² × d_z GEMM and about the same solve work again."""
    m, dz, dx = shape["m"], shape["tokens"] * shape["dim"], 3 * shape["px"] ** 2
    fwd = 2 * m * m * (dz + dx) + 2 * (2 / 3 * m**3 + 2 * m**3)
    return fwd if mode == "fwd" else fwd + 2 * m * m * dz + 2 * (2 / 3 * m**3 + 2 * m**3)


REGISTRY: dict[str, OpSpec] = {
    "hsic_normalized_cca": OpSpec(
        name="hsic_normalized_cca",
        shapes={
            "tiny": dict(m=32, tokens=17, dim=64, px=16),
            "cifar10_vit_s": dict(m=128, tokens=65, dim=384, px=32),  # MIMIR CIFAR-10, patch 2, per-GPU batch
            "imagenet_vit_b_b256": dict(m=256, tokens=50, dim=768, px=224),
            "imagenet_vit_b_b512": dict(m=512, tokens=50, dim=768, px=224),  # MIMIR ImageNet per-GPU batch
        },
        make_inputs=_hsic_inputs,
        providers={
            "ref": lambda: hsic_normalized_cca,
            "ref_compiled": lambda: torch.compile(hsic_normalized_cca),
        },
        flops=_hsic_flops,
    ),
}
