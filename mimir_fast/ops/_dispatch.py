"""Which implementation an op runs: its Triton kernel or its plain-PyTorch reference.

The choice is an explicit predicate, ``use_triton(op, *tensors, supported=..., reason=...)``, called by each
public op on every call; nothing is swapped at import time. ``MIMIR_FAST_KERNELS`` selects the policy:

- ``auto`` (default): Triton when triton is importable, every tensor is a CUDA tensor on one device and the op
  supports the call (dtype, shape limits: ``supported``); the reference otherwise.
- ``triton``: always Triton. CPU tensors are allowed only under Triton's interpreter (``TRITON_INTERPRET=1``,
  how CI tests the kernels). Anything Triton cannot run is a ``KernelUnavailable`` error naming the reason.
- ``torch``: always the reference.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ..errors import ConfigError

KERNEL_MODES = ("auto", "triton", "torch")
ENV_VAR = "MIMIR_FAST_KERNELS"


class KernelUnavailable(ConfigError):
    """``MIMIR_FAST_KERNELS=triton`` was asked for a call that Triton cannot run."""


def kernel_mode() -> str:
    """The policy from ``MIMIR_FAST_KERNELS`` (default ``auto``); an unknown value is a ``ConfigError``."""
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise ConfigError(f"{ENV_VAR}={mode!r} is not one of {', '.join(KERNEL_MODES)}")
    return mode


_TRITON_FOUND: list[bool] = []


def triton_available() -> bool:
    """Whether ``triton`` can be imported (looked up once, without importing it)."""
    if not _TRITON_FOUND:
        _TRITON_FOUND.append(importlib.util.find_spec("triton") is not None)
    return _TRITON_FOUND[0]


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(op: str, *tensors: torch.Tensor, supported: bool = True, reason: str = "") -> bool:
    """Whether ``op`` should run its Triton kernel on these tensors.

    Args:
        op: the op's name, for error messages.
        tensors: every tensor input of the call.
        supported: the op's own eligibility test for this call (dtypes, shape limits).
        reason: why ``supported`` is false, for the error under ``MIMIR_FAST_KERNELS=triton``.

    Raises:
        KernelUnavailable: under ``MIMIR_FAST_KERNELS=triton`` when the call cannot run in Triton.
    """
    mode = kernel_mode()
    if mode == "torch":
        return False
    devices = {t.device for t in tensors}
    on_one_gpu = len(devices) == 1 and next(iter(devices)).type == "cuda"
    if mode == "auto":
        return on_one_gpu and supported and triton_available()
    if not triton_available():
        raise KernelUnavailable(f"{op}: {ENV_VAR}=triton but triton is not installed")
    on_cpu = all(d.type == "cpu" for d in devices)
    if not (on_one_gpu or (on_cpu and interpreting())):
        where = ", ".join(sorted(str(d) for d in devices))
        raise KernelUnavailable(
            f"{op}: {ENV_VAR}=triton needs CUDA tensors on one device (or CPU tensors with TRITON_INTERPRET=1), "
            f"got tensors on {where}"
        )
    if not supported:
        raise KernelUnavailable(f"{op}: {ENV_VAR}=triton cannot run this call: {reason}")
    return True
