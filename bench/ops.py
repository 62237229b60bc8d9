"""Time every registered op, per named shape, provider and mode, and write a JSON result file and a table.

    python -m bench.ops --op all --modes fwd fwdbwd --out bench/results

Each record has the op, mode, shape, dtype, provider, median/p20/p80 ms, GB/s and TFLOP/s from the op's
formulas, the speedups over the eager and the compiled reference, the share of the device's measured copy
bandwidth and matmul throughput (measured in the same run, stored under ``roofline``), and the provider's
errors against the eager reference. The first call of each provider (compilation, autotuning) is timed
apart, as ``first_call_s``. A provider that cannot run a shape is recorded with its one-line error.
"""

from __future__ import annotations

import argparse
import time

import torch

from mimir_fast.device import resolve_device

from . import roofline
from .harness import add_run_args, synchronize, time_fn, write_results
from .registry import OP_NAMES, OpSpec, load

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _flat(outs) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in outs])


def _runner(spec: OpSpec, fn, inputs: tuple, mode: str, grad_out):
    """A zero-argument call of ``fn`` in ``mode``; fwdbwd returns the input gradients."""
    if mode == "fwd":
        return lambda: (fn(*inputs),)
    wrt = [inputs[i] for i in spec.grad_argnums]

    def fwdbwd():
        out = fn(*inputs)
        return torch.autograd.grad(out, wrt, grad_outputs=grad_out, allow_unused=True)

    return fwdbwd


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _time(fn, device: torch.device, iters: int) -> dict:
    """do_bench quantiles on a GPU (L2 flushed between calls); synchronised wall time on the CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
        return {"median_ms": med, "p20_ms": p20, "p80_ms": p80, "method": "triton.testing.do_bench"}
    return {**time_fn(fn, device, warmup=2, iters=iters), "method": "wall clock"}


def bench_op(spec: OpSpec, shape_names: list[str], providers: list[str] | None, modes: list[str],
             device: torch.device, dtype: torch.dtype, iters: int, roof: dict) -> list[dict]:
    records = []
    for shape_name in shape_names:
        shape = spec.shapes[shape_name]
        for mode in modes:
            torch.manual_seed(0)
            inputs = spec.make_inputs(shape, device, dtype, mode != "fwd")
            ref_fn = spec.providers["ref"]()
            out = ref_fn(*inputs)
            grad_out = None if out.dim() == 0 else torch.randn_like(out)
            ref_outs = [t for t in _runner(spec, ref_fn, inputs, mode, grad_out)() if t is not None]
            ref_flat = _flat(ref_outs)
            base: dict[str, float] = {}
            flops = spec.flops(shape, mode) if spec.flops else None
            nbytes = spec.bytes(shape, mode, dtype) if spec.bytes else None
            for provider in providers or list(spec.providers):
                rec = {"op": spec.name, "mode": mode, "shape_name": shape_name, "shape": shape,
                       "dtype": str(dtype).replace("torch.", ""), "provider": provider,
                       "is_kernel": provider == spec.kernel}
                try:
                    call = _runner(spec, spec.providers[provider](), inputs, mode, grad_out)
                    start = time.perf_counter()
                    outs = [t for t in call() if t is not None]  # first call: compilation, autotuning
                    synchronize(device)
                    rec["first_call_s"] = time.perf_counter() - start
                    flat = _flat(outs)
                    diff = flat - ref_flat
                    rec["correct"] = {
                        "max_abs_err_vs_ref": diff.abs().max().item(),
                        "rms_ratio_vs_ref": (diff.pow(2).mean().sqrt() / ref_flat.pow(2).mean().sqrt()
                                             .clamp_min(1e-30)).item(),
                        "ref_max_abs": ref_flat.abs().max().item(),
                    }
                    rec.update(_time(call, device, iters))
                except Exception as exc:  # an SDPA backend that does not support the shape, an OOM, ...
                    rec["error"] = _one_line(exc)
                    records.append(rec)
                    print(f"{spec.name:20s} {shape_name:18s} {mode:6s} {provider:14s} skipped: {rec['error']}")
                    continue
                ms = rec["median_ms"]
                if provider in ("ref", "ref_compiled"):
                    base[provider] = ms
                rec["gbps"] = nbytes / ms / 1e6 if nbytes else None
                rec["tflops"] = flops / ms / 1e9 if flops else None
                rec["pct_copy_bw"] = 100 * rec["gbps"] / roof["copy_gbps"] if nbytes else None
                rec["pct_matmul_peak"] = 100 * rec["tflops"] / roof["matmul_tflops"] if flops else None
                rec["baseline"] = "ref"
                rec["speedup"] = base["ref"] / ms if "ref" in base else None
                rec["speedup_vs_compiled"] = base["ref_compiled"] / ms if "ref_compiled" in base else None
                records.append(rec)
                print(f"{spec.name:20s} {shape_name:18s} {mode:6s} {provider:14s} {ms:9.3f} ms  "
                      f"x{rec['speedup'] or 0:5.2f} eager  x{rec['speedup_vs_compiled'] or 0:5.2f} compiled  "
                      f"err {rec['correct']['max_abs_err_vs_ref']:.1e}")
    return records


def table(results: list[dict]) -> str:
    """A markdown table of the records (one row per op, shape, mode and provider)."""
    head = ("| op | shape | mode | dtype | provider | median ms | GB/s | TFLOP/s | % copy BW | % matmul | "
            "× eager | × compiled | max err |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    for r in results:
        if "error" in r:
            rows.append(f"| {r['op']} | {r['shape_name']} | {r['mode']} | {r['dtype']} | {r['provider']} | "
                        f"not run: {r['error'][:60]} |||||||")
            continue
        rows.append(
            f"| {r['op']} | {r['shape_name']} | {r['mode']} | {r['dtype']} | {r['provider']} | "
            f"{r['median_ms']:.3f} | {f(r['gbps'], '.0f')} | {f(r['tflops'], '.2f')} | {f(r['pct_copy_bw'], '.0f')} | "
            f"{f(r['pct_matmul_peak'], '.0f')} | {f(r['speedup'], '.2f')} | {f(r['speedup_vs_compiled'], '.2f')} | "
            f"{r['correct']['max_abs_err_vs_ref']:.1e} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--op", default="all", help=f"op name or 'all' ({', '.join(OP_NAMES)})")
    p.add_argument("--shapes", default=None, help="comma-separated shape names (default: all of each op's)")
    p.add_argument("--skip_shapes", default="", help="comma-separated shape names to leave out (e.g. tiny)")
    p.add_argument("--providers", default=None, help="comma-separated providers (default: all of each op's)")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: bf16 on a GPU, fp32 on the CPU")
    add_run_args(p)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    names = OP_NAMES if args.op == "all" else [args.op]
    roof = roofline.measure(device, dtype)
    print(f"device ceilings: copy {roof['copy_gbps']:.0f} GB/s, matmul {roof['matmul_tflops']:.2f} TFLOP/s")
    results = []
    for name in names:
        spec = load(name)
        shapes = [s for s in args.shapes.split(",") if s in spec.shapes] if args.shapes else list(spec.shapes)
        shapes = [s for s in shapes if s not in args.skip_shapes.split(",")]
        providers = [q for q in args.providers.split(",") if q in spec.providers] if args.providers else None
        results += bench_op(spec, shapes, providers, args.modes, device, dtype, args.iters, roof)
    path = write_results(args.out, "ops", device, results, extra={"roofline": roof})
    path.with_suffix(".md").write_text(table(results))
    print(table(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
