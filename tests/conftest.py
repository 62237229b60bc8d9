"""Shared test setup: Triton's CPU interpreter for kernels, the ``gpu`` marker, fixed seeds."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any @triton.jit definition

import pytest  # noqa: E402
import torch  # noqa: E402


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
