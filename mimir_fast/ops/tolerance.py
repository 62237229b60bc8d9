"""The accuracy rule every kernel is held to (FlashAttention's rule), used by the tests and by the dispatch check.

A kernel's result passes when its error against a float64 "truth" is at most twice the error of PyTorch's own
reference run at the kernel's precision, plus the rounding floor of that precision:

    |kernel - truth|_max <= 2 |ref_lowp - truth|_max + FLOOR[dtype] · scale

so no tolerance is picked by hand. ``scale`` is ``max(1, |truth|_max)`` (the tests' plain rule), or, with
``relative=True``, the power of two just above ``|truth|_max``: the floor then stands for a few units in the last
place of the tensor's own largest value, so a tensor of values far below 1 (gradients of a mean, centred Gram
matrices) is not passed by a floor meant for values near 1. Both forms compare in float64; NaN in the kernel's
result fails, and a reference that is itself non-finite at low precision earns no allowance (the floor alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOOR = {torch.float64: 1e-12, torch.float32: 2**-20, torch.float16: 2**-9, torch.bfloat16: 2**-6}
"""Rounding floor per dtype: a few units in the last place of a value of magnitude 1."""


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, computed in float64; NaN anywhere gives inf."""
    d = (a.double() - b.double()).abs()
    return float("inf") if torch.isnan(d).any() else d.max().item() if d.numel() else 0.0


def err_ratio(ref: torch.Tensor, tri: torch.Tensor) -> float:
    """RMS(tri - ref) / RMS(ref) in float64 (FLA's ``get_err_ratio``); NaN anywhere gives inf."""
    d = tri.double() - ref.double()
    if torch.isnan(d).any():
        return float("inf")
    return (d.pow(2).mean().sqrt() / ref.double().pow(2).mean().sqrt().clamp_min(1e-30)).item()


@dataclass(frozen=True)
class Comparison:
    """One tensor compared with the rule."""

    name: str
    """What was compared (e.g. ``"out"``, ``"grad 0"``)."""
    error: float
    """``|kernel - truth|_max`` (inf for NaN or a shape mismatch)."""
    bound: float
    """The rule's tolerance for this tensor."""
    lowp_error: float
    """``|ref_lowp - truth|_max``: PyTorch's own error at the kernel's precision."""

    @property
    def ok(self) -> bool:
        return self.error <= self.bound

    def message(self, dtype: torch.dtype) -> str:
        return (f"{self.name}: max error {self.error:.3e} > bound {self.bound:.3e} "
                f"(PyTorch {dtype} error {self.lowp_error:.3e})")


def compare(name: str, truth: torch.Tensor, tri: torch.Tensor, ref_lowp: torch.Tensor, dtype: torch.dtype,
            *, relative: bool = False) -> Comparison:
    """The rule applied to one tensor (see the module docstring); a shape mismatch is an infinite error.

    Args:
        name: what is compared, for messages.
        truth: the reference computed in float64.
        tri: the kernel's result.
        ref_lowp: the reference computed at the kernel's precision (same inputs, rounded to ``dtype``).
        dtype: the kernel's precision, which selects the floor.
        relative: scale the floor by the tensor's own magnitude instead of ``max(1, ·)``.
    """
    top = truth.double().abs().max().item() if truth.numel() else 1.0
    if relative:
        # a power of two: dividing by it is exact, so this is the plain rule on the tensor in its own units
        scale = 2.0 ** torch.frexp(torch.tensor(max(top, 1e-300), dtype=torch.float64))[1].item()
    else:
        scale = max(1.0, top)
    if ref_lowp.shape != truth.shape:
        raise ValueError(f"{name}: reference shapes differ: {tuple(ref_lowp.shape)} != {tuple(truth.shape)}")
    lowp_err = max_err(ref_lowp, truth)
    allowance = 2 * lowp_err if lowp_err < float("inf") else 0.0  # NaN/inf in PyTorch's own result: no allowance
    err = max_err(tri, truth) if tri.shape == truth.shape else float("inf")
    return Comparison(name, err, allowance + FLOOR[dtype] * scale, lowp_err)
