"""Time every registered op, per named shape, provider and mode, and write a JSON result file.

    python -m bench.ops --op all --modes fwd fwdbwd --out bench/results

Each record has the op, mode, shape, dtype, provider, median/p20/p80 ms, TFLOP/s, the speedup over the
eager reference and the provider's error against it. Compile time is reported in its own field.
"""

from __future__ import annotations

import argparse
import time

import torch

from mimir_fast.train.runner import resolve_device

from .harness import add_run_args, synchronize, time_fn, write_results
from .registry import REGISTRY, OpSpec


def _call(spec: OpSpec, fn, inputs: tuple, mode: str):
    out = fn(*inputs)
    if mode == "fwd":
        return out
    return torch.autograd.grad(out, [inputs[i] for i in spec.grad_argnums])


def bench_op(spec: OpSpec, shape_names: list[str], providers: list[str], modes: list[str], device: torch.device,
             iters: int) -> list[dict]:
    records = []
    for shape_name in shape_names:
        shape = spec.shapes[shape_name]
        for mode in modes:
            inputs = spec.make_inputs(shape, device, mode != "fwd")
            ref_out = _call(spec, spec.providers["ref"](), inputs, mode)
            ref_flat = torch.cat([t.detach().reshape(-1).double() for t in (ref_out if mode != "fwd" else [ref_out])])
            base_ms = None
            for provider in providers:
                fn = spec.providers[provider]()
                start = time.perf_counter()
                out = _call(spec, fn, inputs, mode)  # first call: compilation for compiled providers
                synchronize(device)
                first_call_s = time.perf_counter() - start
                flat = torch.cat([t.detach().reshape(-1).double() for t in (out if mode != "fwd" else [out])])
                err = (flat - ref_flat).abs().max().item()
                timing = time_fn(lambda: _call(spec, fn, inputs, mode), device, warmup=2, iters=iters)
                base_ms = timing["median_ms"] if provider == "ref" else base_ms
                flops = spec.flops(shape, mode) if spec.flops else None
                records.append({
                    "op": spec.name, "mode": mode, "shape_name": shape_name, "shape": shape,
                    "dtype": str(inputs[0].dtype).replace("torch.", ""), "provider": provider, **timing,
                    "tflops": flops / timing["median_ms"] / 1e9 if flops else None,
                    "baseline": "ref", "speedup": base_ms / timing["median_ms"] if base_ms else None,
                    "compile_s": first_call_s if provider != "ref" else None,
                    "correct": {"max_abs_err_vs_ref": err, "ref_max_abs": ref_flat.abs().max().item()},
                })
                print(f"{spec.name:22s} {shape_name:22s} {mode:7s} {provider:13s} "
                      f"{timing['median_ms']:9.3f} ms  speedup {records[-1]['speedup']:.2f}x  err {err:.2e}")
    return records


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--op", default="all", help="op name or 'all'")
    p.add_argument("--shapes", default=None, help="comma-separated shape names (default: all)")
    p.add_argument("--providers", default="ref,ref_compiled")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    add_run_args(p)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    specs = REGISTRY.values() if args.op == "all" else [REGISTRY[args.op]]
    results = []
    for spec in specs:
        shapes = args.shapes.split(",") if args.shapes else list(spec.shapes)
        results += bench_op(spec, shapes, args.providers.split(","), args.modes, device, args.iters)
    print(f"wrote {write_results(args.out, 'ops', device, results)}")


if __name__ == "__main__":
    main()
