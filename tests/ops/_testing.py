"""Comparison helpers for kernel tests (the FlashAttention rule, FLA's error ratio).

A kernel passes when its error against a float64 "truth" is at most twice the error of PyTorch's own
reference run at the kernel's precision, plus the rounding floor of that precision:

    |tri - truth|_max <= 2 |ref_lowp - truth|_max + floor(dtype) · max(1, |truth|_max)

so no tolerance is picked by hand. Data-movement kernels (gather, scatter) are compared with ``atol=0``.
"""

from __future__ import annotations

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


def assert_close(name: str, truth: torch.Tensor, tri: torch.Tensor, ref_lowp: torch.Tensor, dtype: torch.dtype):
    """Check ``tri`` against ``truth`` within twice ``ref_lowp``'s error plus the floor of ``dtype``.

    Args:
        name: what is compared, for the failure message (e.g. ``"dq"``).
        truth: the reference computed in float64.
        tri: the kernel's result.
        ref_lowp: the reference computed at the kernel's precision (same inputs, rounded to ``dtype``).
        dtype: the kernel's precision.
    """
    assert tri.shape == truth.shape, f"{name}: shape {tuple(tri.shape)} != {tuple(truth.shape)}"
    scale = max(1.0, truth.double().abs().max().item() if truth.numel() else 1.0)
    lowp_err = max_err(ref_lowp, truth)
    bound = 2 * lowp_err + FLOOR[dtype] * scale
    err = max_err(tri, truth)
    assert err <= bound, (
        f"{name}: max error {err:.3e} > bound {bound:.3e} (PyTorch {dtype} error {lowp_err:.3e}, "
        f"ratio {err_ratio(truth, tri):.2e})"
    )


def assert_equal(name: str, ref: torch.Tensor, tri: torch.Tensor):
    """Bit-exact comparison for data-movement kernels; NaN left in ``tri`` fails."""
    assert tri.shape == ref.shape, f"{name}: shape {tuple(tri.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(tri).any() or torch.isnan(ref).any(), f"{name}: NaN in the kernel's output"
    assert torch.equal(tri, ref), f"{name}: max difference {max_err(ref, tri):.3e}"



def enable_device_asserts(monkeypatch):
    """What ``TRITON_DEBUG=1`` does on a GPU (kernels compile their ``tl.device_assert`` checks), in Triton's
    interpreter, which ignores that switch: its builder's options get ``debug=True`` for the rest of the test."""
    import dataclasses

    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    monkeypatch.setattr(builder, "options", dataclasses.replace(builder.options, debug=True))
