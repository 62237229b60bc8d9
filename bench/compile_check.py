"""Compile every Triton kernel for an H100 (sm_90a) without a GPU, at the launch configurations the benchmarks use.

    python -m bench.compile_check [--ops ...] [--dtypes fp32 fp16 bf16] [--out PATH]

What it does, per op in ``kernels/`` and per non-"tiny" shape of ``bench/specs/<op>.py`` and dtype:

1. Runs the op's real launchers (``mimir_fast.kernels.<op>``: forward, then the backward the benchmark's
   ``fwdbwd`` mode needs, i.e. with the ``need_*`` flags of the spec's ``grad_argnums``) on *fake* CUDA tensors
   (``torch._subclasses.FakeTensorMode``: shapes, dtypes and strides, no data, no GPU). Every ``kernel[grid](...)``
   is intercepted and recorded instead of launched, so the block sizes, warps, stages, constexpr flags and size
   arguments are the ones the launchers' own logic computes; nothing is re-derived here. The launchers' SM count
   (``_utils.num_sms``) is pinned to an H100 SXM's 132. fp32 precision follows torch's defaults
   (``cudnn.allow_tf32 = True``: TF32 in patch_embed_visible; float32 matmul precision "highest": IEEE in
   hsic_gram); unless ``--no-fp32-alt``, fp32 is also run with both flipped (IEEE / TF32), the settings the
   tests and a "high"-precision training run use.
2. Specialises each recorded launch exactly as ``JITFunction.run`` would (Triton's own binder: integer
   arguments equal to 1 become constants, multiples of 16 get ``tt.divisibility``; a tensor's alignment is taken
   from its storage offset, assuming a 16-byte-aligned allocation), deduplicates identical variants and
   compiles each with Triton's real compiler:
   ``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32), options)``
   (TTIR -> TTGIR -> LLVM -> PTX -> ptxas -> cubin; no interpreter, no driver).
3. Reports per variant: compiled or the error; registers per thread, stack frame and spill stores/loads (from
   Triton's ``ptxas -v`` log, or a ``ptxas -v`` run of the PTX when the log is missing), shared memory (Triton's
   ``metadata.shared``, its dynamic allocation, plus any static smem ptxas reports), and an estimated
   occupancy (resident warps of 64 per SM, limited by 64 K registers, 228 KiB shared memory per SM and 1 KiB
   reserved per block) with the limiting resource. A variant needing more than 227 KiB of shared memory per
   block is flagged: it compiles but would fail to launch (``OutOfResources``). From the compiler's own output:
   ``dot_inputs``, what each ``tl.dot`` multiplies (``fp16``, ``bf16``, or fp32 operands as ``tf32``,
   ``tf32x3`` or ``ieee``; read from the TTIR), ``tensor_core``, the instructions they lower to (``wgmma``,
   ``mma`` or ``none``; read from the PTX), and ``float_args_in_fma``, the float scalar arguments that a PTX
   ``fma`` takes as a factor (attention's ``sm_scale`` must not be one: its product is rounded before the row
   maximum is subtracted, in the forward and the backward alike).

It also scans ``kernels/*.py`` for the ``tl.*`` names and keyword arguments the kernels use and checks that the
running Triton has them. Everything here runs under whichever Triton is imported, so the GPU machine's version
(3.6) can be checked from a CPU machine without touching the venv:

    pip download triton==3.6.0 --no-deps -d /tmp/tri36 && unzip -q /tmp/tri36/triton-*.whl -d /tmp/tri36/site
    PYTHONPATH=/tmp/tri36/site python -m bench.compile_check --out bench/results/compile-check_sm90-triton3.6.json

(the wheel bundles its own ptxas; the JSON records the version as ``env.triton``).

Results: a table on stdout and a JSON document (schema ``mimir_fast.bench/1``, suite ``compile-check``) with the
environment (``bench.harness.environment``), the API scan, a summary and one record per variant (kernel,
constexprs, signature, options, grid examples, the (op, shape, dtype) uses, status and the figures above; no
ptxas logs and no absolute paths). Default path: ``bench/results/compile-check_sm90_<yyyymmdd>_<shortsha>.json``.
A variant that fails to compile is recorded with its error; the exit status is 1 when any variant failed (or
an op's launchers raised), else 0. tests/test_compile_check.py runs it in CI and asserts on the records.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import importlib
import inspect
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .compile_variant import (  # noqa: F401  (re-exported: tests read them here)
    KERNELS_DIR,
    SM90_SMEM_PER_BLOCK,
    TARGET,
    compile_variant,
    dot_inputs,
    float_args_in_fma,
    occupancy,
    parse_ptxas,
    strip_paths,
    tensor_core,
)
from .harness import SCHEMA, environment, result_path
from .registry import load

OPS = ("patch_embed_visible", "decoder_unshuffle", "masked_mse_loss", "visible_attention", "hsic_gram")
"""The ops with Triton kernels (``kernels/<op>.py``)."""
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
H100_SMS = 132
"""Streaming multiprocessors of an H100 SXM, returned by ``_utils.num_sms``."""


# ---------------------------------------------------------------------------------------------- recording
@dataclass
class Launch:
    """One intercepted ``kernel[grid](*args, **kwargs)``, and the device guard it ran under."""

    kernel: object  # triton.runtime.jit.JITFunction (InterpretedFunction under TRITON_INTERPRET=1)
    grid: tuple
    args: tuple
    kwargs: dict
    device: torch.device | None = None


class _Recorder:
    """Stands in for a JITFunction in its module while a launcher runs: ``[grid](...)`` records the call."""

    def __init__(self, kernel, sink: list[Launch], guarded: list):
        self.kernel, self.sink, self.guarded = kernel, sink, guarded

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append(Launch(self.kernel, tuple(grid) if isinstance(grid, (tuple, list)) else (grid,),
                                    args, kwargs, self.guarded[-1] if self.guarded else None))

        return launch


@contextlib.contextmanager
def _intercept(module, sink: list[Launch]):
    """Replace the module's ``*_kernel`` functions by recorders, pin ``_utils.num_sms`` to an H100's and record the
    device of ``_utils.device_guard`` (which would need a real GPU) instead of entering it."""
    from mimir_fast.kernels import _utils
    from triton.runtime.jit import KernelInterface

    guarded: list = []

    @contextlib.contextmanager
    def guard(t):
        guarded.append(t.device)
        try:
            yield
        finally:
            guarded.pop()

    saved = {name: obj for name, obj in vars(module).items()
             if isinstance(obj, KernelInterface) and name.endswith("_kernel")}
    for name, obj in saved.items():
        setattr(module, name, _Recorder(obj, sink, guarded))
    old_guard, _utils.device_guard = _utils.device_guard, guard
    old_sms, _utils.num_sms = _utils.num_sms, lambda device: H100_SMS
    try:
        yield
    finally:
        _utils.device_guard, _utils.num_sms = old_guard, old_sms
        for name, obj in saved.items():
            setattr(module, name, obj)


@contextlib.contextmanager
def _fp32_setting(alt: bool):
    """torch's defaults, or (alt) TF32 off for convolutions and "high" float32 matmul precision."""
    old = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    if alt:
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old[0]
        torch.set_float32_matmul_precision(old[1])


# One driver per op: the forward launcher, then the backward launchers the benchmark's fwdbwd mode calls, with
# the arguments mimir_fast/ops/<op>.py passes them (``need[i]``: input i receives a gradient).
def _drive_patch_embed_visible(k, inputs: tuple, need: tuple) -> None:
    imgs, weight, bias, pos, ids_keep = inputs
    y = k.patch_embed_visible_fwd(imgs, weight, bias, pos, ids_keep)
    dy = torch.randn_like(y).to(weight.dtype).contiguous()  # ops: grad_out.to(weight.dtype)
    if need[0]:
        k.patch_embed_visible_bwd_imgs(dy, weight, ids_keep, tuple(imgs.shape))
    if need[1]:
        k.patch_embed_visible_bwd_weight(dy, imgs, ids_keep, tuple(weight.shape))


def _drive_decoder_unshuffle(k, inputs: tuple, need: tuple) -> None:
    x, mask_token, ids_restore, pos = inputs
    y = k.decoder_unshuffle_fwd(x, mask_token, ids_restore, pos)
    dtypes = (x.dtype, mask_token.dtype, pos.dtype)
    if need[0] or need[1] or need[3]:
        k.decoder_unshuffle_bwd(torch.randn_like(y), ids_restore, x.shape[1] - 1, *dtypes, need[0], need[1], need[3])
    if not need[3]:  # and with a learned positional embedding, which the benchmark's frozen one does not need
        k.decoder_unshuffle_bwd(torch.randn_like(y), ids_restore, x.shape[1] - 1, *dtypes, True, True, True)


def _drive_masked_mse_loss(k, inputs: tuple, need: tuple) -> None:
    imgs, pred, mask, p, norm_pix = inputs
    loss, mask_sum = k.masked_mse_loss_fwd(imgs, pred, mask, p, norm_pix)
    if need[0] or need[1]:
        k.masked_mse_loss_bwd(torch.ones_like(loss), imgs, pred, mask, mask_sum, p, norm_pix, need[0], need[1])


def _drive_visible_attention(k, inputs: tuple, need: tuple) -> None:
    q, kk, v = inputs
    o, stats = k.visible_attention_fwd(q, kk, v)
    if any(need[:3]):
        k.visible_attention_bwd(torch.randn_like(o), q, kk, v, o, stats)  # randn_like keeps o's strides


def _drive_hsic_gram(k, inputs: tuple, need: tuple) -> None:
    x, y, sigma = inputs
    out, r = k.hsic_gram_fwd(x, y, sigma)
    if need[0] or need[1]:
        k.hsic_gram_bwd(torch.randn_like(out), r, x, y, sigma, need[0], need[1])


DRIVERS = {
    "patch_embed_visible": _drive_patch_embed_visible,
    "decoder_unshuffle": _drive_decoder_unshuffle,
    "masked_mse_loss": _drive_masked_mse_loss,
    "visible_attention": _drive_visible_attention,
    "hsic_gram": _drive_hsic_gram,
}


def record_launches(op: str, shape: dict, dtype: torch.dtype, alt: bool, device: str = "cuda") -> list[Launch]:
    """The launches of ``op``'s forward and benchmark backward at ``shape`` and ``dtype`` (fake CUDA tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    spec = load(op)
    module = importlib.import_module(f"mimir_fast.kernels.{op}")
    launches: list[Launch] = []
    with _fp32_setting(alt), FakeTensorMode(), _intercept(module, launches):
        torch.manual_seed(0)
        inputs = spec.make_inputs(shape, torch.device(device), dtype, False)
        need = tuple(i in spec.grad_argnums for i in range(len(inputs)))
        DRIVERS[op](module, inputs, need)
    return launches


# ---------------------------------------------------------------------------------------------- specialising
class _Ptr:
    """A tensor as Triton's binder sees it: a dtype and an address (the fake tensor's byte offset)."""

    def __init__(self, t: torch.Tensor):
        self.dtype = t.dtype
        self._ptr = t.storage_offset() * t.element_size()

    def data_ptr(self) -> int:
        return self._ptr

    @staticmethod
    def ptr_range() -> int:
        return 0


def _as_arg(x):
    return _Ptr(x) if isinstance(x, torch.Tensor) else x


def specialise(launch: Launch, backend) -> tuple[dict, dict, dict, object]:
    """(signature, constexprs, attrs, options) exactly as ``JITFunction.run`` computes them for this launch."""
    from triton import knobs
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    kwargs = {name: _as_arg(v) for name, v in launch.kwargs.items()}
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    if hasattr(knobs.compilation, "instrumentation_mode"):
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*[_as_arg(a) for a in launch.args], **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options


# ---------------------------------------------------------------------------------------------- API scan
def api_scan(kernels_dir: Path = KERNELS_DIR) -> list[dict]:
    """Every ``tl.<name>`` and every keyword of a ``tl.<name>(...)`` call or ``.to(...)`` in the kernels, and
    whether the running Triton has it."""
    import triton.language as tl

    used: dict[tuple[str, str | None], set[str]] = {}
    for path in sorted(kernels_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tl":
                used.setdefault((node.attr, None), set()).add(path.name)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                f = node.func
                name = (f.attr if isinstance(f.value, ast.Name) and f.value.id == "tl"
                        else "tensor.to" if f.attr == "to" else None)
                for kw in node.keywords if name else ():
                    if kw.arg:
                        used.setdefault((name, kw.arg), set()).add(path.name)
    rows = []
    for (name, kw), files in sorted(used.items(), key=lambda x: (x[0][0], x[0][1] or "")):
        obj = getattr(tl.tensor, "to", None) if name == "tensor.to" else getattr(tl, name, None)
        ok = obj is not None
        if ok and kw is not None:
            try:
                params = inspect.signature(getattr(obj, "fn", obj)).parameters  # JITFunction: its Python function
                ok = kw in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
            except (TypeError, ValueError):
                ok = None  # not introspectable
        rows.append({"name": name, "keyword": kw, "available": ok, "files": sorted(files)})
    return rows


# ---------------------------------------------------------------------------------------------- driver
@dataclass
class Variant:
    kernel: object
    signature: dict
    constexprs: dict
    attrs: dict
    options: object
    uses: list[dict] = field(default_factory=list)
    grids: list = field(default_factory=list)


def _named_constexprs(kernel, constexprs: dict) -> dict:
    """The declared ``tl.constexpr`` parameters by name (not the integers specialised to 1)."""
    declared = {p.num: p.name for p in kernel.params if p.is_constexpr}
    return {declared[k[0]]: v for k, v in sorted(constexprs.items()) if len(k) == 1 and k[0] in declared}


def _specialised_ones(kernel, constexprs: dict) -> list[str]:
    declared = {p.num for p in kernel.params if p.is_constexpr}
    return [kernel.params[k[0]].name for k in sorted(constexprs) if len(k) == 1 and k[0] not in declared]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def default_out() -> Path:
    return result_path("bench/results", "compile-check", environment(torch.device("cpu")), device_slug="sm90")


def _fmt_int(x) -> str:
    return "-" if x is None else str(x)


def table(records: list[dict]) -> str:
    head = ("kernel", "constexprs", "w/s", "dtypes", "status", "regs", "spill st/ld", "smem", "occ", "dots", "tc",
            "shapes")
    rows = []
    for r in records:
        cx = " ".join(f"{k}={v}" for k, v in r["constexprs"].items())
        spill = (f"{r['spill_stores']}/{r['spill_loads']}" if "spill_stores" in r else "-")
        occ = f"{r['occupancy']:.2f} {r['occupancy_limiter']}" if r.get("occupancy") is not None else "-"
        dtypes = ",".join(sorted({u["dtype"] + ("*" if u["fp32_alt"] else "") for u in r["uses"]}))
        status = r["status"] if r["status"] != "error" else "ERROR"
        shapes = ",".join(dict.fromkeys(u["shape"] for u in r["uses"]))
        rows.append((r["kernel"].removeprefix("_").removesuffix("_kernel"), cx,
                     f"{r['options']['num_warps']}/{r['options']['num_stages']}", dtypes, status,
                     _fmt_int(r.get("regs")), spill, _fmt_int(r.get("shared")), occ,
                     ",".join(r.get("dot_inputs", [])) or "-", r.get("tensor_core", "-"), shapes))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def collect(ops=OPS, dtypes=tuple(DTYPES), shapes: list[str] | None = None, fp32_alt: bool = True,
            progress: bool = True, jobs: int | None = None) -> tuple[list[dict], list[dict]]:
    """Record, specialise and compile every variant: (records, launcher errors), as described in the module.
    ``jobs``: compile processes (default: one per CPU)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget(*TARGET)
    backend = make_backend(target)
    tmp_cache = tempfile.TemporaryDirectory(prefix="compile_check_cache_")
    old_cache = knobs.cache.dir
    knobs.cache.dir = tmp_cache.name  # fresh cache: every variant is compiled (and ptxas logs) for real

    # 1. record the launches and group them into distinct variants
    variants: dict[str, Variant] = {}
    launcher_errors: list[dict] = []
    for op in ops:
        spec = load(op)
        names = [s for s in spec.shapes if (s in shapes if shapes else s != "tiny")]
        for shape_name in names:
            for dname in dtypes:
                for alt in (False, True) if dname == "fp32" and fp32_alt else (False,):
                    use = {"op": op, "shape": shape_name, "dtype": dname, "fp32_alt": alt}
                    try:
                        launches = record_launches(op, spec.shapes[shape_name], DTYPES[dname], alt)
                    except Exception as exc:  # noqa: BLE001 - reported, not fatal
                        launcher_errors.append({**use, "error": strip_paths(f"{type(exc).__name__}: {exc}")[:2000]})
                        continue
                    for launch in launches:
                        try:
                            sig, cx, attrs, options = specialise(launch, backend)
                        except Exception as exc:  # noqa: BLE001
                            launcher_errors.append({**use, "kernel": launch.kernel.fn.__name__, "error": strip_paths(
                                f"specialise: {type(exc).__name__}: {exc}")[:2000]})
                            continue
                        key = repr((launch.kernel.fn.__name__, sorted(sig.items()), sorted(cx.items()),
                                    sorted(attrs.items()), sorted(options.__dict__.items())))
                        var = variants.setdefault(key, Variant(launch.kernel, sig, cx, attrs, options))
                        var.uses.append(use)
                        if len(var.grids) < 4 and launch.grid not in var.grids:
                            var.grids.append(launch.grid)

    # 2. compile each variant, in `jobs` processes (each compiles with its own cache folder)
    records = []
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(variants)))
    work = [(var.kernel.fn.__module__, var.kernel.fn.__name__, var.signature, var.constexprs, var.attrs,
             var.options) for var in variants.values()]
    try:
        if jobs == 1:
            results = map(_compile_job, work)
        else:
            import concurrent.futures
            import multiprocessing

            pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                          initializer=_worker_init, initargs=(sys.path,))
            results = pool.map(_compile_job, work)
        for i, (var, result) in enumerate(zip(variants.values(), results), 1):
            name = var.kernel.fn.__name__
            if progress:
                print(f"[{i}/{len(variants)}] {name} {_named_constexprs(var.kernel, var.constexprs)}",
                      file=sys.stderr, flush=True)
            records.append(_jsonable({
                "kernel": name,
                "module": var.kernel.fn.__module__,
                "constexprs": _named_constexprs(var.kernel, var.constexprs),
                "specialised_to_1": _specialised_ones(var.kernel, var.constexprs),
                "signature": var.signature,
                "divisibility_16": [var.kernel.params[k[0]].name for k, v in sorted(var.attrs.items())
                                    if len(k) == 1 and v and "tt.divisibility" in str(v)],
                "options": {k: var.options.__dict__[k] for k in ("num_warps", "num_stages", "num_ctas", "maxnreg",
                                                                 "enable_fp_fusion") if k in var.options.__dict__},
                "grids": var.grids,
                "uses": var.uses,
                **result,
            }))
    finally:
        if jobs > 1:
            pool.shutdown()
        knobs.cache.dir = old_cache
        tmp_cache.cleanup()
    return records, launcher_errors


def _worker_init(path: list[str]) -> None:
    """A compile worker: the parent's import path, a fresh Triton cache (every variant compiled for real)."""
    from triton import knobs

    sys.path[:] = path
    knobs.cache.dir = tempfile.mkdtemp(prefix="compile_check_cache_")


def _compile_job(job: tuple) -> dict:
    """``compile_variant`` for (module, kernel name, signature, constexprs, attrs, options)."""
    from triton.backends.compiler import GPUTarget

    module, name, signature, constexprs, attrs, options = job
    kernel = getattr(importlib.import_module(module), name)
    return compile_variant(kernel, signature, constexprs, attrs, options, GPUTarget(*TARGET))


def summary(records: list[dict], launcher_errors: list[dict]) -> dict:
    """Counts over the variants: status, tensor-core lowering, spills, shared memory, occupancy."""
    ok = [r for r in records if r["status"] != "error"]
    return {
        "variants": len(records),
        "ok": sum(r["status"] == "ok" for r in records),
        "warn": sum(r["status"] == "warn" for r in records),
        "error": len(records) - len(ok),
        "launcher_errors": len(launcher_errors),
        "spilling": sum(bool(r.get("spill_stores") or r.get("spill_loads")) for r in ok),
        "tensor_core": {tc: sum(r.get("tensor_core") == tc for r in ok) for tc in ("wgmma", "mma", "none")},
        "max_regs": max((r.get("regs") or 0 for r in ok), default=None),
        "max_shared": max((r.get("shared") or 0 for r in ok), default=None),
        "min_occupancy": min((r["occupancy"] for r in ok if r.get("occupancy") is not None), default=None),
        "below_quarter_occupancy": sorted({r["kernel"] for r in ok if (r.get("occupancy") or 1) < 0.25}),
        "compile_s": round(sum(r.get("compile_s", 0) for r in records), 1),
    }


def document(records: list[dict], launcher_errors: list[dict], argv: list[str]) -> dict:
    """The JSON document: environment, target, API scan, summary, records; no absolute paths."""
    env = environment(torch.device("cpu"))
    return {"schema": SCHEMA, "suite": "compile-check",
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": ["python", "-m", "bench.compile_check", *(strip_paths(a) for a in argv)], "env": env,
            "target": {"backend": TARGET[0], "arch": TARGET[1], "warp_size": TARGET[2], "sms": H100_SMS},
            "api_scan": api_scan(), "launcher_errors": launcher_errors,
            "summary": summary(records, launcher_errors), "results": records}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--shapes", nargs="+", default=None, help="shape names (default: every non-tiny shape)")
    parser.add_argument("--no-fp32-alt", action="store_true",
                        help="fp32 with torch's default precision flags only (skip the IEEE/TF32-flipped run)")
    parser.add_argument("--out", default=None, help="JSON file, or a folder for the default file name "
                        "(default: bench/results/compile-check_sm90_<yyyymmdd>_<shortsha>.json)")
    parser.add_argument("--quiet", action="store_true", help="no per-variant progress on stderr")
    parser.add_argument("--jobs", type=int, default=None, help="compile processes (default: one per CPU)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)

    import triton

    records, launcher_errors = collect(args.ops, args.dtypes, args.shapes, not args.no_fp32_alt,
                                       progress=not args.quiet, jobs=args.jobs)
    doc = document(records, launcher_errors, argv)
    print(table(records))
    summ = doc["summary"]
    print(f"\n{summ['variants']} variants: {summ['ok']} ok, {summ['warn']} with warnings, {summ['error']} failed; "
          f"tensor cores {summ['tensor_core']}; target sm_90a, triton {triton.__version__}; dtypes marked * are "
          f"fp32 with cudnn.allow_tf32=False and float32 matmul precision 'high'")
    for r in records:
        if r["status"] != "ok":
            print(f"- {r['kernel']} {r['constexprs']}: {r.get('error') or '; '.join(r.get('problems', []))}")
    for e in launcher_errors:
        print(f"- launcher error {e}")
    missing = [a for a in doc["api_scan"] if a["available"] is False]
    print(f"API scan: {len(doc['api_scan'])} tl names/keywords used, "
          + ("all present in this triton" if not missing else
             "MISSING in this triton: " + ", ".join(f"{a['name']}({a['keyword']}=)" if a["keyword"] else a["name"]
                                                     for a in missing)))

    out = Path(args.out) if args.out else default_out()
    if out.suffix != ".json":
        out = out / default_out().name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if summ["error"] or launcher_errors else 0


if __name__ == "__main__":
    sys.exit(main())
