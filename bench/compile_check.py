"""Compile every Triton kernel for an H100 (sm_90a) without a GPU, at the launch configurations the benchmarks use.

    python -m bench.compile_check [--ops ...] [--dtypes fp32 fp16 bf16] [--out PATH]

What it does, per op in ``kernels/`` and per non-"tiny" shape of ``bench/specs/<op>.py`` and dtype:

1. Runs the op's real launchers (``mimir_fast.kernels.<op>``: forward, then the backward the benchmark's
   ``fwdbwd`` mode needs, i.e. with the ``need_*`` flags of the spec's ``grad_argnums``) on *fake* CUDA tensors
   (``torch._subclasses.FakeTensorMode``: shapes, dtypes and strides, no data, no GPU). Every ``kernel[grid](...)``
   is intercepted and recorded instead of launched, so the block sizes, warps, stages, constexpr flags and size
   arguments are the ones the launchers' own logic computes; nothing is re-derived here. The launchers' SM count
   (``_num_sms``) is pinned to an H100 SXM's 132. fp32 precision follows torch's defaults
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
   block is flagged: it compiles but would fail to launch (``OutOfResources``).

It also scans ``kernels/*.py`` for the ``tl.*`` names and keyword arguments the kernels use and checks that the
running Triton has them. Everything here runs under whichever Triton is imported, so the GPU machine's version
(3.6) can be checked from a CPU machine without touching the venv:

    pip download triton==3.6.0 --no-deps -d /tmp/tri36 && unzip -q /tmp/tri36/triton-*.whl -d /tmp/tri36/site
    PYTHONPATH=/tmp/tri36/site python -m bench.compile_check --out bench/results/compile-check_sm90-triton3.6.json

(the wheel bundles its own ptxas; the JSON records ``env.triton`` and ``triton_path``).

Results: a table on stdout and a JSON document (schema ``mimir_fast.bench/1``, suite ``compile-check``) with the
environment (``bench.harness.environment``), the API scan and one record per variant (kernel, constexprs,
signature, options, grid examples, the (op, shape, dtype) uses, status, resources, ptxas log). Default path:
``bench/results/compile-check_sm90_<yyyymmdd>_<shortsha>.json``. A variant that fails to compile is recorded
with its error; the exit status is 1 when any variant failed (or an op's launchers raised), else 0.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import importlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .harness import SCHEMA, environment, result_path
from .registry import load

OPS = ("patch_embed_visible", "decoder_unshuffle", "masked_mse_loss", "visible_attention", "hsic_gram")
"""The ops with Triton kernels (``kernels/<op>.py``)."""
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
H100_SMS = 132
"""Streaming multiprocessors of an H100 SXM, returned by the launchers' ``_num_sms``."""
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


# ---------------------------------------------------------------------------------------------- recording
@dataclass
class Launch:
    """One intercepted ``kernel[grid](*args, **kwargs)``."""

    kernel: object  # triton.runtime.jit.JITFunction
    grid: tuple
    args: tuple
    kwargs: dict


class _Recorder:
    """Stands in for a JITFunction in its module while a launcher runs: ``[grid](...)`` records the call."""

    def __init__(self, kernel, sink: list[Launch]):
        self.kernel, self.sink = kernel, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append(Launch(self.kernel, tuple(grid) if isinstance(grid, (tuple, list)) else (grid,),
                                    args, kwargs))

        return launch


@contextlib.contextmanager
def _intercept(module, sink: list[Launch]):
    """Replace the module's ``*_kernel`` JITFunctions by recorders and pin ``_num_sms`` to an H100's."""
    from triton.runtime.jit import JITFunction

    saved = {name: obj for name, obj in vars(module).items()
             if isinstance(obj, JITFunction) and name.endswith("_kernel")}
    if hasattr(module, "_num_sms"):
        saved["_num_sms"] = module._num_sms
        module._num_sms = lambda device: H100_SMS
    for name, obj in saved.items():
        if name != "_num_sms":
            setattr(module, name, _Recorder(obj, sink))
    try:
        yield
    finally:
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
    if need[0] or need[1] or need[3]:
        k.decoder_unshuffle_bwd(torch.randn_like(y), ids_restore, x.shape[1] - 1, x.dtype, mask_token.dtype,
                                pos.dtype, need[0], need[1], need[3])


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


def record_launches(op: str, shape: dict, dtype: torch.dtype, alt: bool) -> list[Launch]:
    """The launches of ``op``'s forward and benchmark backward at ``shape`` and ``dtype`` (fake CUDA tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    spec = load(op)
    module = importlib.import_module(f"mimir_fast.kernels.{op}")
    launches: list[Launch] = []
    with _fp32_setting(alt), FakeTensorMode(), _intercept(module, launches):
        torch.manual_seed(0)
        inputs = spec.make_inputs(shape, torch.device("cuda"), dtype, False)
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


# ---------------------------------------------------------------------------------------------- compiling
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
        text = str(exc).strip()
        rec.update(status="error", error=f"{type(exc).__name__}: {text[:4000]}")
        rec["compile_s"] = round(time.perf_counter() - start, 2)
        return rec
    rec["compile_s"] = round(time.perf_counter() - start, 2)
    ptxas_log = log.getvalue()
    if "Used " not in ptxas_log:
        ptxas_log = _ptxas_rerun(compiled.asm["ptx"])
    meta = compiled.metadata
    res = parse_ptxas(ptxas_log)
    shared = int(getattr(meta, "shared", 0) or 0) + res.get("static_smem", 0)
    occ, limiter = occupancy(res.get("regs"), shared, meta.num_warps)
    rec.update(status="ok", **res, shared=shared, num_warps=meta.num_warps, num_stages=meta.num_stages,
               occupancy=occ, occupancy_limiter=limiter, ptxas_log=ptxas_log.strip())
    problems = []
    if shared > SM90_SMEM_PER_BLOCK:
        problems.append(f"needs {shared} B shared memory > {SM90_SMEM_PER_BLOCK} B per block: fails to launch")
    if res.get("spill_stores") or res.get("spill_loads"):
        problems.append(f"spills {res['spill_stores']} B stores / {res['spill_loads']} B loads")
    if problems:
        rec.update(status="warn", problems=problems)
    return rec


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
    head = ("kernel", "constexprs", "w/s", "dtypes", "status", "regs", "spill st/ld", "smem", "occ", "shapes")
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
                     _fmt_int(r.get("regs")), spill, _fmt_int(r.get("shared")), occ, shapes))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


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
    args = parser.parse_args(argv)

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget(*TARGET)
    backend = make_backend(target)
    tmp_cache = tempfile.TemporaryDirectory(prefix="compile_check_cache_")
    knobs.cache.dir = tmp_cache.name  # fresh cache: every variant is compiled (and ptxas logs) for real

    # 1. record the launches and group them into distinct variants
    variants: dict[str, Variant] = {}
    launcher_errors: list[dict] = []
    for op in args.ops:
        spec = load(op)
        shapes = [s for s in spec.shapes if (s in args.shapes if args.shapes else s != "tiny")]
        for shape_name in shapes:
            for dname in args.dtypes:
                for alt in (False, True) if dname == "fp32" and not args.no_fp32_alt else (False,):
                    use = {"op": op, "shape": shape_name, "dtype": dname, "fp32_alt": alt}
                    try:
                        launches = record_launches(op, spec.shapes[shape_name], DTYPES[dname], alt)
                    except Exception as exc:  # noqa: BLE001 - reported, not fatal
                        launcher_errors.append({**use, "error": f"{type(exc).__name__}: {exc}"[:2000]})
                        continue
                    for launch in launches:
                        try:
                            sig, cx, attrs, options = specialise(launch, backend)
                        except Exception as exc:  # noqa: BLE001
                            launcher_errors.append({**use, "kernel": launch.kernel.fn.__name__,
                                                    "error": f"specialise: {type(exc).__name__}: {exc}"[:2000]})
                            continue
                        key = repr((launch.kernel.fn.__name__, sorted(sig.items()), sorted(cx.items()),
                                    sorted(attrs.items()), sorted(options.__dict__.items())))
                        var = variants.setdefault(key, Variant(launch.kernel, sig, cx, attrs, options))
                        var.uses.append(use)
                        if len(var.grids) < 4 and launch.grid not in var.grids:
                            var.grids.append(launch.grid)

    # 2. compile each variant
    records = []
    total = len(variants)
    for i, var in enumerate(variants.values(), 1):
        name = var.kernel.fn.__name__
        print(f"[{i}/{total}] {name} {_named_constexprs(var.kernel, var.constexprs)}", file=sys.stderr, flush=True)
        result = compile_variant(var.kernel, var.signature, var.constexprs, var.attrs, var.options, target)
        records.append({
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
        })
    tmp_cache.cleanup()

    # 3. report
    api = api_scan()
    print(table(records))
    n_err = sum(r["status"] == "error" for r in records)
    n_warn = sum(r["status"] == "warn" for r in records)
    print(f"\n{len(records)} variants: {len(records) - n_err - n_warn} ok, {n_warn} with warnings, {n_err} failed; "
          f"target sm_90a, triton {triton.__version__}; dtypes marked * are fp32 with cudnn.allow_tf32=False "
          f"and float32 matmul precision 'high'")
    for r in records:
        if r["status"] != "ok":
            print(f"- {r['kernel']} {r['constexprs']}: {r.get('error') or '; '.join(r.get('problems', []))}")
    for e in launcher_errors:
        print(f"- launcher error {e}")
    missing = [a for a in api if a["available"] is False]
    print(f"API scan: {len(api)} tl names/keywords used, "
          + ("all present in this triton" if not missing else
             "MISSING in this triton: " + ", ".join(f"{a['name']}({a['keyword']}=)" if a["keyword"] else a["name"]
                                                     for a in missing)))

    out = Path(args.out) if args.out else default_out()
    if out.suffix != ".json":
        out = out / default_out().name
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment(torch.device("cpu"))
    doc = {"schema": SCHEMA, "suite": "compile-check",
           "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "argv": sys.argv, "env": env,
           "target": {"backend": TARGET[0], "arch": TARGET[1], "warp_size": TARGET[2], "sms": H100_SMS},
           "triton_path": os.path.dirname(triton.__file__),
           "api_scan": api, "launcher_errors": launcher_errors, "results": _jsonable(records)}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if n_err or launcher_errors else 0


if __name__ == "__main__":
    sys.exit(main())
