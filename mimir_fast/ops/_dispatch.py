"""Which implementation an op runs: its Triton kernel, its plain-PyTorch reference or (attention) an SDPA backend.

The choice is an explicit predicate, ``choose(op, *tensors, ...)`` (``use_triton`` for the ops whose only
candidate is the kernel), called by each public op on every call; nothing is swapped at import time.
``MIMIR_FAST_KERNELS`` selects the policy:

- ``auto`` (default): on CUDA, the path the op's *dispatch record* allows for this device, dtype and shape class
  (``records.decide``: the kernel only where it was validated against float64 and timed faster than the
  reference); the reference where there is no record, off CUDA, for an unsupported call, without triton.
- ``triton``: always Triton, with no check. CPU tensors are allowed only under Triton's interpreter
  (``TRITON_INTERPRET=1``, how CI tests the kernels). Anything Triton cannot run is a ``KernelUnavailable``
  error naming the reason.
- ``torch``: always the reference, with no check.

The decision reads an in-memory table (``_DECISIONS``) filled from the cache file outside any traced region:
lazily by the first eager call, or by ``runcheck.check_unrecorded`` before a run's first step. Inside
``torch.compile`` tracing it does no file IO, no timing and no host sync, so the traced graph holds the path
the records chose.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Iterator

import torch

from ..errors import ConfigError
from . import records

KERNEL_MODES = ("auto", "triton", "torch")
ENV_VAR = "MIMIR_FAST_KERNELS"
TRITON = records.TRITON
REFERENCE = records.REFERENCE


class KernelUnavailable(ConfigError):
    """``MIMIR_FAST_KERNELS=triton`` was asked for a call that Triton cannot run."""


_FORCED: list[str] = []
"""A stack of modes set by ``forced`` (the check's own calls); its top wins over the environment."""


def kernel_mode() -> str:
    """The policy from ``MIMIR_FAST_KERNELS`` (default ``auto``); an unknown value is a ``ConfigError``."""
    if _FORCED:
        return _FORCED[-1]
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise ConfigError(f"{ENV_VAR}={mode!r} is not one of {', '.join(KERNEL_MODES)}")
    return mode


@contextlib.contextmanager
def forced(mode: str) -> Iterator[None]:
    """Run the block under ``mode`` (``triton`` or ``torch``) whatever ``MIMIR_FAST_KERNELS`` says."""
    if mode not in KERNEL_MODES:
        raise ValueError(f"unknown kernel mode {mode!r}")
    _FORCED.append(mode)
    try:
        yield
    finally:
        _FORCED.pop()


_TRITON_FOUND: list[bool] = []


def triton_available() -> bool:
    """Whether ``triton`` can be imported (looked up once, without importing it)."""
    if not _TRITON_FOUND:
        _TRITON_FOUND.append(importlib.util.find_spec("triton") is not None)
    return _TRITON_FOUND[0]


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def pow2_bucket(n: int, lo: int = 1) -> int:
    """The smallest power of two ≥ max(n, lo): the bucket of a size in a shape class."""
    b = lo
    while b < n:
        b *= 2
    return b


# --- the in-memory state (module globals: read while tracing, written only outside it) -----------------------

_IDENTITY: dict[int, str] = {}
"""CUDA device index -> ``"<device name> sm<major><minor>"``."""
_DECISIONS: dict[tuple[str, str, str, str], tuple[str, str]] = {}
"""(identity, op, shape class, dtype) -> (path, reason), from the records of this process's versions and sources."""
_RUN = {"loaded": False, "compiled": False}
"""Whether the cache file was read into ``_DECISIONS``, and whether the run compiles (the baseline it beats)."""
_COLLECT: dict[tuple[str, str, str, str], tuple[dict, torch.device]] | None = None
"""While ``collecting``: (identity, op, shape class, dtype) -> the first call's (shape, device); else None."""
_SEEN: dict[tuple[str, str, str], tuple[str, str, str]] = {}
"""(op, shape class, dtype) -> (identity, path, reason) of this process's eager calls, for the run's report."""


def device_identity(device: torch.device) -> str | None:
    """``"<device name> sm<major><minor>"`` of a CUDA device (looked up once per device), None off CUDA.

    While tracing, only an identity looked up before is returned (None otherwise): nothing is queried there.
    """
    if device.type != "cuda":
        return None
    index = device.index or 0
    if index not in _IDENTITY and not torch.compiler.is_compiling():
        major, minor = torch.cuda.get_device_capability(index)
        _IDENTITY[index] = f"{torch.cuda.get_device_name(index)} sm{major}{minor}"
    return _IDENTITY.get(index)


def ensure_loaded(compiled: bool | None = None) -> None:
    """Fill ``_DECISIONS`` from the cache file (once per process; again when ``compiled`` changes). Only the
    records of this process's torch and Triton versions and kernel sources are kept."""
    if compiled is not None and compiled != _RUN["compiled"]:
        _RUN["compiled"] = compiled
        _RUN["loaded"] = False
    if _RUN["loaded"]:
        return
    _RUN["loaded"] = True  # also after a bad file: one warning, not one per call
    install(records.load().values())


def install(recs) -> None:
    """Put records into ``_DECISIONS`` (those of other versions or kernel sources are skipped)."""
    for rec in recs:
        try:
            if records.record_key(rec["identity"], rec["op"], rec["shape_class"], rec["dtype"]) != rec.get("key"):
                continue
            key = (rec["identity"], rec["op"], rec["shape_class"], rec["dtype"])
            _DECISIONS[key] = records.decide(rec, _RUN["compiled"])
        except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError):
            continue  # a malformed record (edited by hand?) is skipped: its key runs the reference


@contextlib.contextmanager
def collecting() -> Iterator[dict[tuple[str, str, str, str], tuple[dict, torch.device]]]:
    """Within the block every ``auto`` call that could run a kernel takes the reference and is collected:
    (identity, op, shape class, dtype) -> (shape, device) of its first call."""
    global _COLLECT
    _COLLECT = {}
    try:
        yield _COLLECT
    finally:
        _COLLECT = None


def reset() -> None:
    """Forget every decision, identity and report entry (tests; a changed cache file)."""
    _IDENTITY.clear()
    _DECISIONS.clear()
    _SEEN.clear()
    _RUN.update(loaded=False, compiled=False)


def choose(op: str, *tensors: torch.Tensor, supported: bool = True, reason: str = "",
           dtype: torch.dtype | None = None, shape: dict | None = None, shape_class: str | None = None) -> str:
    """The path of one call: ``"triton"``, ``"reference"`` or (attention) an SDPA backend's name.

    Args:
        op: the op's name.
        tensors: every tensor input of the call; only their ``.device`` is read.
        supported: the op's own eligibility test for this call (dtypes, shape limits).
        reason: why ``supported`` is false, for the error under ``MIMIR_FAST_KERNELS=triton``.
        dtype: the precision the kernel would compute in (the autocast dtype under autocast).
        shape: the call's sizes in the op's ``make_inputs`` vocabulary (what a check of this class runs).
        shape_class: the op's ``shape_class(shape)``.

    Raises:
        KernelUnavailable: under ``MIMIR_FAST_KERNELS=triton`` when the call cannot run in Triton.
    """
    mode = kernel_mode()
    if mode == "torch":
        return REFERENCE
    devices = {t.device for t in tensors}
    if mode == "triton":
        return _forced_triton(op, devices, supported, reason)
    dtype_name = str(dtype).removeprefix("torch.")
    identity = device_identity(next(iter(devices))) if len(devices) == 1 else None
    key = (identity or "", op, shape_class or "", dtype_name)
    tracing = torch.compiler.is_compiling()
    if identity is None:
        path, why = REFERENCE, "no CUDA" if all(d.type != "cuda" for d in devices) else "tensors on several devices"
    elif not supported:
        path, why = REFERENCE, f"unsupported call: {reason}"
    elif not triton_available():
        path, why = REFERENCE, "triton not installed"
    elif _COLLECT is not None and not tracing:
        _COLLECT.setdefault(key, (dict(shape or {}), next(iter(devices))))
        path, why = REFERENCE, "collecting"
    else:
        if not tracing:
            ensure_loaded()
        path, why = _DECISIONS.get(key, (REFERENCE, "no record" if _RUN["loaded"] else "records not loaded"))
    if not tracing:
        _SEEN[(op, shape_class or "", dtype_name)] = (identity or "", path, why)
    return path


def use_triton(op: str, *tensors: torch.Tensor, supported: bool = True, reason: str = "",
               dtype: torch.dtype | None = None, shape: dict | None = None, shape_class: str | None = None) -> bool:
    """Whether ``op`` should run its Triton kernel on these tensors: ``choose(...) == "triton"``."""
    return choose(op, *tensors, supported=supported, reason=reason, dtype=dtype, shape=shape,
                  shape_class=shape_class) == TRITON


def _forced_triton(op: str, devices: set[torch.device], supported: bool, reason: str) -> str:
    if not triton_available():
        raise KernelUnavailable(f"{op}: {ENV_VAR}=triton but triton is not installed")
    on_one_gpu = len(devices) == 1 and next(iter(devices)).type == "cuda"
    on_cpu = all(d.type == "cpu" for d in devices)
    if not (on_one_gpu or (on_cpu and interpreting())):
        where = ", ".join(sorted(str(d) for d in devices))
        raise KernelUnavailable(
            f"{op}: {ENV_VAR}=triton needs CUDA tensors on one device (or CPU tensors with TRITON_INTERPRET=1), "
            f"got tensors on {where}"
        )
    if not supported:
        raise KernelUnavailable(f"{op}: {ENV_VAR}=triton cannot run this call: {reason}")
    return TRITON
