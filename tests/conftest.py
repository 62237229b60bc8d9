"""Shared test setup: Triton's CPU interpreter for kernels, NaN-filled kernel outputs, the ``gpu`` marker,
fixed seeds, and a private dispatch-record cache per test (the user's own cache is never read or written)."""

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
def _private_dispatch_records(monkeypatch, tmp_path):
    """Each test starts with no dispatch record, in its own cache file, and the in-run check off (tests that
    exercise it turn it on)."""
    from mimir_fast.ops import _dispatch
    from mimir_fast.ops.records import PATH_ENV
    from mimir_fast.ops.runcheck import CHECK_ENV

    monkeypatch.setenv(PATH_ENV, str(tmp_path / "dispatch.json"))
    monkeypatch.setenv(CHECK_ENV, "0")
    _dispatch.reset()
    yield
    _dispatch.reset()


@pytest.fixture(autouse=True)
def _poison_kernel_outputs(monkeypatch):
    """Every buffer a Triton launcher allocates starts as NaN, so an unwritten element fails its test."""
    from mimir_fast.kernels import _utils

    monkeypatch.setattr(_utils, "POISON_OUTPUTS", True)


@pytest.fixture
def kernel_device() -> torch.device:
    """Where kernel tests run: the GPU when there is one, else the CPU under Triton's interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
