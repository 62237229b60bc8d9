"""Triton kernels for mimir_fast, installed as ``mimir_fast.kernels``.

Nothing lives here yet: every op currently runs its plain-PyTorch reference in ``mimir_fast.ops``.
The fused patch gather, visible-token attention and batched HSIC Gram kernels arrive with the
kernel issue; each will sit in ``kernels/<op>.py`` beside its reference in ``mimir_fast/ops/<op>.py``.
This package must stay importable without a GPU and without importing triton at import time.
"""
