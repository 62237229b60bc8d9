"""End-to-end pretraining step: img/s, step ms, counted FLOPs, MFU, peak memory and compile time, in suites.

    python -m bench.step --configs digits_micro --methods mimir mae --out bench/results      # the step grid
    python -m bench.step --suite all --compile cudagraphs --out bench/results                # every comparison

It times ``mimir_fast.train.engine.train_step`` (attack, forward, HSIC, backward, fused AdamW through the
non-finite guard, as the trainer runs it) on a device-resident synthetic batch, so the loader is not measured
(``bench/loader.py`` is). FLOPs are counted once per point on the eager model with torch's flop formulas
(matmuls, convolutions, attention: 2 per multiply-add); MFU divides them by the device's dense bf16 peak.
The first calls (compilation, CUDA-graph recording) are timed apart: ``first_calls_s`` and ``compile_s``.

Suites (``--suite``):

- ``step`` (default): the grid ``--configs`` × ``--methods`` × ``--attack_steps`` × ``--mask_ratios``, in
  ``--mode`` (``fast``: this project's step; ``reference``: ``bench/baseline.py``) with ``--compile``;
- ``masking``: MIMIR PGD-1 at each of ``--mask_ratios`` (default 0 and 0.75; the training forward and the
  attack's forwards alike), per decoder: the summary is img/s(0.75) / img/s(0) beside the counted FLOP ratio;
- ``pgd``: PGD-K for ``--pgd_steps`` (default 1 3 10): t(K)/t(1) beside the (2K+3)F model's (2K+3)/5;
- ``baseline``: this project's step against the reference-style step at the same configuration;
- ``compile``: eager against compiled (``--compile``, or ``on`` when that resolves to eager);
- ``all``: masking, pgd, baseline and compile. Several suites may be named; a point they share is measured once.

The grid alone writes ``step_<device>_<date>_<sha>.json`` (what ``bench/loader.py`` reads), other selections
``step-<suites>_...``; each has step records (``kind: step``; a point that failed has only its ``error``) and
the suites' summary records (``kind: summary``, ``bench/step_summary.py``). A table is printed at the end;
``--records_jsonl`` also appends each step record to a file as soon as it is measured.

Each point runs as a training run does: before its first step, the dispatch check of ``mimir_fast.ops.runcheck``
validates and times the kernel calls that have no record on this GPU (at most 30 s), and the record says which
path each op took (``kernels``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch._dynamo

from mimir_fast.device import autocast_dtype, resolve_device
from mimir_fast.methods import create_method
from mimir_fast.ops.runcheck import check_unrecorded, kernel_report_line
from mimir_fast.train import compile as compile_module
from mimir_fast.train.compile import compile_model, resolve_compile
from mimir_fast.train.engine import train_step
from mimir_fast.train.nonfinite import NonFiniteGuard
from mimir_fast.train.optim import build_optimizer, param_groups_weight_decay

from . import step_summary
from .baseline import ReferenceStep
from .harness import FlopCount, add_run_args, peak_flops, synchronize, time_fn, write_results
from .step_configs import CONFIGS, build, decoder_shape, default_configs

SUITES = ("step", "masking", "pgd", "baseline", "compile", "all")
ALL = ["masking", "pgd", "baseline", "compile"]
"""What ``--suite all`` runs."""
FIRST_CALLS = 3
"""Calls timed one by one before the timed loop: compilation, autotuning and CUDA-graph recording happen here."""


@dataclass(frozen=True)
class Point:
    """One measurement."""

    config: str
    method: str = "mimir"
    attack_steps: int = 1
    mask_ratio: float | None = None
    """Training and attack mask ratio; None keeps the preset's (0.75 and 0.75)."""
    mode: str = "fast"
    """fast (``train_step``) or reference (``bench.baseline.ReferenceStep``)."""
    compile: str = "off"
    """Resolved compile mode of the fast step: off, on or cudagraphs (always off for the reference)."""

    def key(self) -> tuple:
        k = 0 if self.method == "mae" else self.attack_steps
        return (self.config, self.method, k, 0.75 if self.mask_ratio is None else self.mask_ratio, self.mode,
                "off" if self.mode == "reference" else self.compile)


@contextlib.contextmanager
def compile_backend(name: str):
    """``torch.compile``'s backend for models compiled inside this block (inductor, or aot_eager)."""
    old = compile_module.BACKEND
    compile_module.BACKEND = name
    try:
        yield
    finally:
        compile_module.BACKEND = old


def measure(point: Point, device: torch.device, iters: int, backend: str = "inductor") -> dict:
    """Time ``point`` and return its record."""
    cfg, model = build(point.config, point.method, point.attack_steps, point.mask_ratio, device)
    imgs = torch.rand(cfg.batch_size, 3, cfg.input_size, cfg.input_size, device=device)
    labels = torch.zeros(cfg.batch_size, dtype=torch.long, device=device)
    compiled = point.mode == "fast" and point.compile != "off"
    if point.mode == "reference":
        ref = ReferenceStep(model, cfg, device)
        count = run = lambda: ref(imgs)  # noqa: E731
        precision, path = ref.precision, "reference-style (bench/baseline.py): eager, CPU HSIC inverses, syncs"
    else:
        optimizer = build_optimizer(param_groups_weight_decay(model, cfg.weight_decay), 1e-4, (0.9, 0.95), device)
        guard = NonFiniteGuard(optimizer, device)
        amp = autocast_dtype(cfg.precision, device)
        loss_fn = create_method(cfg).losses

        def make(m):
            return lambda: train_step(m, imgs, labels, optimizer, loss_fn, amp, guard=guard)

        def run_once():  # the eager step without its update, for the dispatch check
            train_step(model, imgs, labels, optimizer, loss_fn, amp, update=False)
            optimizer.zero_grad(set_to_none=True)

        count = make(model)
        check_unrecorded(run_once, compiled=compiled)
        if compiled:
            torch._dynamo.reset()  # a fresh cache per point: no recompile limit carried over, compile time counted
            with compile_backend(backend):
                run = make(compile_model(model, point.compile))
        else:
            run = count
        precision = "bf16" if amp else "fp32"
        path = f"fast: train_step, compile {point.compile}" + (f" ({backend})" if compiled else "")
    with FlopCount() as counter:  # on the eager model: the same arithmetic as the compiled one
        count()
    synchronize(device)
    first_calls = []
    for _ in range(FIRST_CALLS):
        start = time.perf_counter()
        run()
        synchronize(device)
        first_calls.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = time_fn(run, device, warmup=0, iters=iters)
    peak = peak_flops(device)
    step_s = timing["median_ms"] / 1e3
    achieved = counter.flops / step_s
    record = {
        "kind": "step", **asdict(point), "attack_steps": point.attack_steps if point.method == "mimir" else 0,
        "compile": "off" if point.mode == "reference" else point.compile,
        "compile_backend": backend if compiled else None,
        "preset": CONFIGS[point.config].preset, "model": cfg.model, "decoder": decoder_shape(model),
        "note": CONFIGS[point.config].note, "batch_size": cfg.batch_size, "input_size": cfg.input_size,
        "patch_size": cfg.patch_size, "mask_ratio": cfg.mask_ratio, "attack_mask_ratio": cfg.attack_mask_ratio,
        "kept_tokens": int(cfg.num_patches * (1 - cfg.mask_ratio)), "precision": precision, "path": path,
        **timing, "img_per_sec": cfg.batch_size / step_s,
        "step_gflop": counter.flops / 1e9, "gflop_per_img": counter.flops / 1e9 / cfg.batch_size,
        "achieved_tflops": achieved / 1e12, "peak_tflops": peak / 1e12 if peak else None,
        "mfu": achieved / peak if peak else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "first_calls_s": first_calls,
        "compile_s": max(sum(first_calls) - FIRST_CALLS * step_s, 0.0) if compiled else None,
        "kernels": kernel_report_line() if point.mode == "fast" else None,
    }
    if point.mode == "reference":
        record.update(nonfinite_losses=ref.nonfinite_losses, hsic_left_out=ref.hsic_left_out)
    else:
        record["skipped_updates"] = guard.read()[0]
    if cfg.mask_ratio == 0:
        record["note"] += ("; mask ratio 0 removes no patch, so the reconstruction loss is 0/0 (NaN) and the "
                           "guard skips every update: the arithmetic timed is the same")
    print(step_summary.step_line(record), flush=True)
    return record


def measure_or_error(point: Point, device: torch.device, iters: int, backend: str) -> dict:
    """``measure``, or the point's record with its one-line ``error`` when it cannot run (the run goes on)."""
    try:
        return measure(point, device, iters, backend)
    except Exception as exc:  # a compile or out-of-memory failure of one point must not lose the others
        text = str(exc).strip().splitlines()
        error = f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
        print(f"{point.config:32s} {point.mode} compile={point.compile} K={point.attack_steps} "
              f"mask={point.mask_ratio}: FAILED {error}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"kind": "step", **asdict(point), "error": error}


def suite_points(suite: str, args, device: torch.device) -> list[Point]:
    """The points of one suite (``all`` is expanded by the caller)."""
    compile_mode = resolve_compile(args.compile, device)
    configs = args.configs or default_configs(suite, device)
    k1 = args.attack_steps[0]
    if suite == "step":
        return [Point(c, m, k, r, args.mode, compile_mode) for c in configs for m in args.methods
                for k in (args.attack_steps if m == "mimir" else [1]) for r in (args.mask_ratios or [None])]
    if suite == "masking":
        return [Point(c, "mimir", k1, r, args.mode, compile_mode) for c in configs
                for r in (args.mask_ratios or [0.0, 0.75])]
    if suite == "pgd":
        return [Point(c, "mimir", k, None, args.mode, compile_mode) for c in configs for k in args.pgd_steps]
    if suite == "baseline":
        return [p for c in configs for p in (Point(c, "mimir", k1, None, "fast", compile_mode),
                                              Point(c, "mimir", k1, None, "reference", "off"))]
    if suite == "compile":
        compiled = compile_mode if compile_mode != "off" else "on"
        return [p for c in configs for p in (Point(c, "mimir", k1, None, "fast", "off"),
                                              Point(c, "mimir", k1, None, "fast", compiled))]
    raise ValueError(f"unknown suite {suite!r}")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", nargs="+", default=["step"], choices=SUITES,
                   help="what to measure (see the module docstring); several share their common points")
    p.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS), metavar="CONFIG",
                   help=f"from {', '.join(CONFIGS)} (default: the suite's, by device)")
    p.add_argument("--methods", nargs="+", default=["mimir", "mae"], choices=["mimir", "mae"])
    p.add_argument("--attack_steps", nargs="+", type=int, default=[1], help="PGD steps K of the step grid")
    p.add_argument("--pgd_steps", nargs="+", type=int, default=[1, 3, 10], help="K of the pgd suite (1 first)")
    p.add_argument("--mask_ratios", nargs="+", type=float, default=None,
                   help="mask ratios of the training forward and the attack (masking suite default: 0 0.75)")
    p.add_argument("--mode", default="fast", choices=["fast", "reference"],
                   help="fast: this project's step; reference: the reference-style baseline (bench/baseline.py)")
    p.add_argument("--compile", default="auto", choices=["auto", "off", "on", "cudagraphs"],
                   help="the fast step's torch.compile (mimir_fast.train.compile; auto: on for CUDA, off for CPU)")
    p.add_argument("--compile_backend", default="inductor", choices=["inductor", "aot_eager"],
                   help="torch.compile backend (aot_eager: the same graphs without code generation)")
    p.add_argument("--warmup", type=int, default=1, choices=[0, 1],
                   help="1: one untimed eager measurement first (the first point of a process is slower)")
    p.add_argument("--records_jsonl", default=None,
                   help="also append each step record to this file as soon as it is measured (one JSON per line)")
    add_run_args(p)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    suites = list(dict.fromkeys(s for name in args.suite for s in (ALL if name == "all" else [name])))
    measured: dict[tuple, dict] = {}
    by_suite: dict[str, list[dict]] = {}
    if args.warmup:  # the first point of a process runs slower (allocator, thread pools): warm them on it, untimed
        first = suite_points(suites[0], args, device)[0]
        print("warm-up (not recorded):", end=" ")
        measure_or_error(replace(first, compile="off"), device, 1, args.compile_backend)
    for suite in suites:
        by_suite[suite] = []
        for point in suite_points(suite, args, device):
            if point.key() not in measured:
                measured[point.key()] = measure_or_error(point, device, args.iters, args.compile_backend)
                if args.records_jsonl:
                    with open(args.records_jsonl, "a") as f:
                        f.write(json.dumps(measured[point.key()]) + "\n")
            by_suite[suite].append(measured[point.key()])
    summaries = step_summary.summarize(by_suite)
    results = list(measured.values()) + summaries
    name = "step" if suites == ["step"] else "-".join(["step", *args.suite])
    path = write_results(args.out, name, device, results)
    print(step_summary.table(results))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
