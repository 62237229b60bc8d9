"""Helpers shared by the Triton kernels: output allocation, launch settings and the device guard.

Outputs are allocated with ``empty``; tests set ``POISON_OUTPUTS = True`` so that every output starts as NaN
and an element a kernel forgets to write fails the comparison instead of passing by luck.
"""

from __future__ import annotations

import contextlib
import functools

import torch

POISON_OUTPUTS = False
"""Fill every buffer from ``empty`` with NaN (integer buffers with -1); set by the test suite."""


def empty(shape: tuple[int, ...] | list[int], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty``, or a NaN-filled buffer when ``POISON_OUTPUTS`` is set."""
    out = torch.empty(tuple(shape), device=device, dtype=dtype)
    if POISON_OUTPUTS:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


@functools.cache
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 2 "programs in flight" under the CPU interpreter."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2


def next_pow2(n: int, minimum: int = 16) -> int:
    """The smallest power of two ≥ max(n, minimum) (``tl.arange`` and ``tl.dot`` need powers of two ≥ 16)."""
    p = minimum
    while p < n:
        p *= 2
    return p


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``t``'s CUDA device current for the launches inside (Triton launches on the current device, so
    tensors on ``cuda:1`` while ``cuda:0`` is current would run on the wrong one); a no-op for CPU tensors."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
