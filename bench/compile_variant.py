"""Compile one recorded kernel variant for sm_90a with Triton's real compiler and read what it became: registers,
spills and shared memory from ptxas, an estimated occupancy, the dot inputs (TTIR) and tensor-core use (PTX).
Used by ``bench.compile_check``."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

TARGET = ("cuda", 90, 32)
"""Triton ``GPUTarget``: backend, compute capability 9.0 (sm_90a), warp size."""
# Per-SM limits of compute capability 9.0 (CUDA C Programming Guide, "Technical Specifications").
SM90_REGS = 65536
SM90_MAX_WARPS = 64
SM90_MAX_BLOCKS = 32
SM90_SMEM_PER_SM = 228 * 1024
SM90_SMEM_PER_BLOCK = 227 * 1024
SM90_SMEM_RESERVED_PER_BLOCK = 1024
KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels"


_RE_REGS = re.compile(r"Used (\d+) registers")
_RE_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_RE_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict:
    """Registers, stack frame, spill stores/loads and static smem of the (single) entry in a ``ptxas -v`` log."""
    out: dict = {}
    if m := _RE_REGS.search(log):
        out["regs"] = int(m.group(1))
    if m := _RE_SPILL.search(log):
        out["stack_bytes"], out["spill_stores"], out["spill_loads"] = map(int, m.groups())
    if m := _RE_SMEM.search(log):
        out["static_smem"] = int(m.group(1))
    return out


def _ptxas_rerun(ptx: str) -> str:
    """``ptxas -v`` on the PTX (Triton's bundled ptxas), when Triton's own log was not captured."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run([get_ptxas(TARGET[1]).path, "-v", "--gpu-name=sm_90a", str(src), "-o",
                              str(Path(tmp) / "k.o")], capture_output=True, text=True, timeout=300)
    return res.stderr + res.stdout


def occupancy(regs: int | None, smem: int, num_warps: int) -> tuple[float | None, str | None]:
    """Estimated resident warps / 64 on an SM of compute capability 9.0, and the limiting resource."""
    if regs is None:
        return None, None
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256  # allocated per warp in units of 256
    limits = {
        "warps": SM90_MAX_WARPS // num_warps,
        "blocks": SM90_MAX_BLOCKS,
        "regs": SM90_REGS // (regs_per_warp * num_warps),
        "smem": SM90_SMEM_PER_SM // (smem + SM90_SMEM_RESERVED_PER_BLOCK) if smem else SM90_MAX_BLOCKS,
    }
    limiter = min(limits, key=limits.get)
    return limits[limiter] * num_warps / SM90_MAX_WARPS, limiter


_RE_DOT = re.compile(r"\btt\.dot\s([^:]*):\s*tensor<[0-9x]+x(\w+)[,>].*?\*\s*tensor<[0-9x]+x(\w+)[,>]")
_MLIR_TYPES = {"f16": "fp16", "bf16": "bf16", "f32": "fp32"}


def dot_inputs(ttir: str) -> list[str]:
    """What the ``tt.dot`` ops of a TTIR multiply: ``fp16``/``bf16`` operands, or fp32 ones by input precision
    (``tf32``, ``tf32x3``, ``ieee``; TTIR omits the default, IEEE). Distinct and sorted."""
    kinds = set()
    for operands, a, b in _RE_DOT.findall(ttir):
        prec = m.group(1) if (m := re.search(r"inputPrecision\s*=\s*(\w+)", operands)) else None
        a, b = _MLIR_TYPES.get(a, a), _MLIR_TYPES.get(b, b)
        kinds.add((prec or "ieee") if a == b == "fp32" else a if a == b else f"{a}*{b}")
    return sorted(kinds)


def tensor_core(ptx: str) -> str:
    """``wgmma`` (Hopper warpgroup MMA), ``mma`` (warp-level ``mma.sync``) or ``none`` (no tensor core)."""
    if re.search(r"\bwgmma\.mma_async", ptx):
        return "wgmma"
    if re.search(r"\bmma\.sync", ptx):
        return "mma"
    return "none"


def float_args_in_fma(ptx: str, arg_names: list[str]) -> list[str]:
    """The float scalar kernel arguments whose register is a factor of a PTX ``fma`` (a product fused with an
    add, so it is never rounded on its own). ``arg_names``: the kernel's runtime arguments in PTX order."""
    fused = []
    for i in map(int, re.findall(r"\.param \.f32 \w+_param_(\d+)", ptx)):
        regs = re.findall(rf"ld\.param\.(?:f32|b32)\s+(%\w+), \[\w+_param_{i}\];", ptx)
        factors = re.findall(r"\bfma\.rn[.\w]*\s+%\w+, (%\w+), (%\w+),", ptx)
        if any(reg in pair for reg in regs for pair in factors):
            fused.append(arg_names[i] if i < len(arg_names) else f"param_{i}")
    return fused


def compile_variant(kernel, signature: dict, constexprs: dict, attrs: dict, options, target) -> dict:
    """Compile one variant; never raises: errors come back as ``status``/``error``."""
    import triton
    from triton import knobs
    from triton.compiler import ASTSource

    rec: dict = {}
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
    except Exception as exc:  # noqa: BLE001 - a failing kernel is a result, not a crash
        text = strip_paths(str(exc).strip())
        rec.update(status="error", error=f"{type(exc).__name__}: {text[:4000]}")
        rec["compile_s"] = round(time.perf_counter() - start, 2)
        return rec
    rec["compile_s"] = round(time.perf_counter() - start, 2)
    ptxas_log = log.getvalue()
    ptx = compiled.asm["ptx"]
    if "Used " not in ptxas_log:
        ptxas_log = _ptxas_rerun(ptx)
    meta = compiled.metadata
    res = parse_ptxas(ptxas_log)
    shared = int(getattr(meta, "shared", 0) or 0) + res.get("static_smem", 0)
    occ, limiter = occupancy(res.get("regs"), shared, meta.num_warps)
    runtime_args = [name for i, name in enumerate(signature) if (i,) not in constexprs]
    rec.update(status="ok", **res, shared=shared, num_warps=meta.num_warps, num_stages=meta.num_stages,
               occupancy=occ, occupancy_limiter=limiter, dot_inputs=dot_inputs(compiled.asm["ttir"]),
               tensor_core=tensor_core(ptx), float_args_in_fma=float_args_in_fma(ptx, runtime_args))
    problems = []
    if shared > SM90_SMEM_PER_BLOCK:
        problems.append(f"needs {shared} B shared memory > {SM90_SMEM_PER_BLOCK} B per block: fails to launch")
    if res.get("spill_stores") or res.get("spill_loads"):
        problems.append(f"spills {res['spill_stores']} B stores / {res['spill_loads']} B loads")
    if problems:
        rec.update(status="warn", problems=problems)
    return rec


def strip_paths(text: str) -> str:
    """``text`` without this machine's absolute paths: the repository, Triton's install and the temp folder."""
    import triton

    roots = {str(KERNELS_DIR.parent): ".", os.path.dirname(os.path.dirname(triton.__file__)): "<site-packages>",
             tempfile.gettempdir(): "<tmp>"}
    for root, name in sorted(roots.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(root, name)
    return text
