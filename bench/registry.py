"""One registry entry per op: named shapes, an input factory, the providers to time, FLOP and byte formulas.

Each op's entry is ``SPEC`` in ``bench/specs/<op>.py`` (the op's name, as in ``kernels/``, ``mimir_fast/ops/``
and ``tests/ops/``). Providers: ``ref`` (the eager reference), ``ref_compiled`` (``torch.compile`` of the
reference; the two baselines every kernel is measured against) and ``triton`` (the op with its kernel forced);
an op may add more (e.g. the SDPA backends for attention).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch

OP_NAMES = (
    "hsic_normalized_cca",
    "hsic_gram",
    "patch_embed_visible",
    "decoder_unshuffle",
    "masked_mse_loss",
    "visible_attention",
)
"""Every benchmarked op; ``bench/specs/<name>.py`` defines its ``SPEC``."""


@dataclass(frozen=True)
class OpSpec:
    """A benchmarked op."""

    name: str
    """The op's name, the same in kernels/, mimir_fast/ops/, tests/ops/ and here."""
    shapes: dict[str, dict]
    """Named shape configurations (e.g. ``vit_b_224_b256``)."""
    make_inputs: Callable[[dict, torch.device, torch.dtype, bool], tuple]
    """(shape, device, dtype, requires_grad) -> positional inputs of every provider."""
    providers: dict[str, Callable[[], Callable]] = field(default_factory=dict)
    """Provider name -> a factory returning the callable to time (called once per shape)."""
    flops: Callable[[dict, str], float] | None = None
    """(shape, mode) -> FLOPs of one call, for TFLOP/s and the share of the matmul peak."""
    bytes: Callable[[dict, str, torch.dtype], float] | None = None
    """(shape, mode, dtype) -> bytes one call must move at least, for GB/s and the share of copy bandwidth."""
    grad_argnums: tuple[int, ...] = (0,)
    """Inputs that receive gradients in fwdbwd mode."""
    kernel: str | None = "triton"
    """The provider that is this project's kernel (None for ops that only have a reference)."""


def load(name: str) -> OpSpec:
    """The ``SPEC`` of one op; an unknown name is a ``KeyError`` listing the known ones."""
    if name not in OP_NAMES:
        raise KeyError(f"unknown op {name!r}; known: {', '.join(OP_NAMES)}")
    return importlib.import_module(f"bench.specs.{name}").SPEC


def registry() -> dict[str, OpSpec]:
    """Every op's ``SPEC``, by name."""
    return {name: load(name) for name in OP_NAMES}
