"""Shared benchmark plumbing: environment capture, timing, FLOP counting and the JSON result file.

A result file is ``bench/results/<suite>_<device-slug>_<yyyymmdd>_<shortsha>.json`` with ``schema``, ``suite``,
``created_utc``, ``argv``, ``env`` (device, versions, commit) and ``results`` (a list of records).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from mimir_fast.device import device_name

SCHEMA = "mimir_fast.bench/1"

# Dense bf16 peak FLOP/s by device-name substring (spec sheets; SXM parts).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The flags every runner shares: --device, --iters, --out."""
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per measurement")
    parser.add_argument("--out", default="bench/results", help="folder for the JSON result file")


def environment(device: torch.device) -> dict:
    """Device, versions and commit: what a reader needs to reproduce or compare a figure."""
    env = {
        "device": device_name(device),
        "device_type": device.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "hostname": socket.gethostname(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(capability=f"{props.major}.{props.minor}", memory_gb=round(props.total_memory / 2**30, 1),
                   driver=_nvidia_driver())
    return env


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of a known GPU; None for the CPU or an unknown device (then no MFU is reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int = 3, iters: int = 10) -> dict:
    """Median, p20 and p80 wall time of ``fn`` in ms, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "p20_ms": q[1], "p80_ms": q[7], "iters": iters}


class FlopCount(TorchDispatchMode):
    """Counts matmul, convolution and attention FLOPs (2 per multiply-add) with torch's flop formulas."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def result_path(out_dir: str | Path, suite: str, env: dict, device_slug: str | None = None) -> Path:
    """``<out_dir>/<suite>_<device-slug>_<yyyymmdd>_<shortsha>.json`` for an ``environment()`` dict; the slug is
    made from ``env["device"]`` unless given."""
    slug = device_slug or re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")[:32] or env["device_type"]
    now = datetime.datetime.now(datetime.timezone.utc)
    return Path(out_dir) / f"{suite}_{slug}_{now:%Y%m%d}_{(env['git_commit'] or 'nogit')[:8]}.json"


def write_results(out_dir: str | Path, suite: str, device: torch.device, results: list[dict],
                  extra: dict | None = None) -> Path:
    """Write the suite's JSON document (``extra`` adds top-level fields) and return its path."""
    env = environment(device)
    now = datetime.datetime.now(datetime.timezone.utc)
    path = result_path(out_dir, suite, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, "suite": suite, "created_utc": now.isoformat(timespec="seconds"), "argv": sys.argv,
           "env": env, **(extra or {}), "results": results}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
