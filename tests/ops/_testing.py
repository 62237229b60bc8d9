"""Comparison helpers for kernel tests (the FlashAttention rule, FLA's error ratio).

A kernel passes when its error against a float64 "truth" is at most twice the error of PyTorch's own
reference run at the kernel's precision, plus the rounding floor of that precision:

    |tri - truth|_max <= 2 |ref_lowp - truth|_max + floor(dtype) · max(1, |truth|_max)

so no tolerance is picked by hand. The rule itself lives in ``mimir_fast/ops/tolerance.py`` (the dispatch check
applies it at run time). Data-movement kernels (gather, scatter) are compared with ``atol=0``.
"""

from __future__ import annotations

import torch

from mimir_fast.ops.tolerance import FLOOR, compare, err_ratio, max_err

__all__ = ["FLOOR", "assert_close", "assert_equal", "err_ratio", "max_err"]


def assert_close(name: str, truth: torch.Tensor, tri: torch.Tensor, ref_lowp: torch.Tensor, dtype: torch.dtype):
    """Check ``tri`` against ``truth`` within twice ``ref_lowp``'s error plus the floor of ``dtype``
    (``mimir_fast.ops.tolerance``, the rule the dispatch check applies at run time).

    Args:
        name: what is compared, for the failure message (e.g. ``"dq"``).
        truth: the reference computed in float64.
        tri: the kernel's result.
        ref_lowp: the reference computed at the kernel's precision (same inputs, rounded to ``dtype``).
        dtype: the kernel's precision.
    """
    assert tri.shape == truth.shape, f"{name}: shape {tuple(tri.shape)} != {tuple(truth.shape)}"
    c = compare(name, truth, tri, ref_lowp, dtype)
    assert c.ok, f"{c.message(dtype)}, ratio {err_ratio(truth, tri):.2e}"


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
