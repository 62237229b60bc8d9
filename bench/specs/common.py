"""Helpers shared by the benchmark entries."""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch

from mimir_fast.ops._dispatch import ENV_VAR
from mimir_fast.ops.hsic_gram import HSIC_SHAPES

__all__ = ["HSIC_SHAPES", "forced", "standard_providers"]


def forced(mode: str, fn: Callable) -> Callable:
    """``fn`` run with ``MIMIR_FAST_KERNELS=mode`` (``torch``: the reference, ``triton``: the kernel).

    The variable is read when the op dispatches, so under ``torch.compile`` it applies while tracing.
    """

    @functools.wraps(fn)
    def run(*args, **kwargs):
        old = os.environ.get(ENV_VAR)
        os.environ[ENV_VAR] = mode
        try:
            return fn(*args, **kwargs)
        finally:
            if old is None:
                os.environ.pop(ENV_VAR, None)
            else:
                os.environ[ENV_VAR] = old

    return run


def standard_providers(fn: Callable) -> dict[str, Callable[[], Callable]]:
    """The three providers of every op: ``ref`` (eager reference), ``ref_compiled`` (``torch.compile`` of the
    reference) and ``triton`` (the kernel forced)."""
    return {
        "ref": lambda: forced("torch", fn),
        "ref_compiled": lambda: forced("torch", torch.compile(fn)),
        "triton": lambda: forced("triton", fn),
    }
