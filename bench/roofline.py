"""The device's measured ceilings, stored with every op benchmark: copy bandwidth and matmul throughput.

Kernels are judged against what this device measurably does, not its spec sheet: a memory-bound kernel
by its share of ``copy_gbps`` (a device-to-device ``copy_``, counting bytes read plus written), a
compute-bound one by its share of ``matmul_tflops`` (a square matmul at the benchmark's dtype).
"""

from __future__ import annotations

import torch

from .harness import time_fn


def measure(device: torch.device, dtype: torch.dtype, iters: int = 10) -> dict:
    """Copy bandwidth (GB/s) and matmul throughput (TFLOP/s) of ``device``, with the sizes used."""
    gpu = device.type == "cuda"
    copy_bytes = (1 << 30) if gpu else (1 << 26)  # 1 GiB on a GPU (far past L2), 64 MiB on the CPU
    src = torch.empty(copy_bytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    copy = time_fn(lambda: dst.copy_(src), device, warmup=3, iters=iters)
    n = 8192 if gpu else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mm = time_fn(lambda: a @ b, device, warmup=3, iters=iters)

    return {
        "copy_gbps": 2 * copy_bytes / copy["median_ms"] / 1e6,
        "copy_bytes": copy_bytes,
        "matmul_tflops": 2 * n**3 / mm["median_ms"] / 1e9,
        "matmul_n": n,
        "matmul_dtype": str(dtype).replace("torch.", ""),
    }
