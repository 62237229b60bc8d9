"""Shared test setup: Triton's CPU interpreter for kernels, NaN-filled kernel outputs, the ``gpu`` marker,
fixed seeds."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Kernels are imported lazily, so this precedes every @triton.jit definition.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _poison_kernel_outputs(monkeypatch):
    """Every buffer a Triton launcher allocates starts as NaN, so an unwritten element fails its test."""
    from mimir_fast.kernels import _utils

    monkeypatch.setattr(_utils, "POISON_OUTPUTS", True)


@pytest.fixture
def kernel_device() -> torch.device:
    """Where kernel tests run: the GPU when there is one, else the CPU under Triton's interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
