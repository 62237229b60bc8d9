"""The run's side of measured dispatch: the bounded check before the first step, and the report of each op's path.

A training or eval runner calls, in this order:

    seconds = check_unrecorded(run_once, budget_s=30.0, compiled=run_compiles)   # before the first step
    print(kernel_report_line())                                                  # and log kernel_report()

``check_unrecorded`` runs ``run_once`` (one forward/backward of the real, *uncompiled* model on a real batch,
no optimizer step) while every dispatch call is collected and takes the reference; then it validates and times,
against float64 and the eager reference, each collected (op, shape class, dtype) on this device that has no
record, within ``budget_s``; writes the new records to the cache file; prints one line. It does nothing (returns
0, prints nothing) off CUDA, when ``MIMIR_FAST_KERNELS`` forces a path, or with ``MIMIR_FAST_DISPATCH_CHECK=0``;
in every case it first loads the records and notes whether the run compiles, so the decisions are ready
before anything is traced.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Callable

import torch

from . import _dispatch, records, validate
from .catalog import OPS

CHECK_ENV = "MIMIR_FAST_DISPATCH_CHECK"
"""``0`` (or ``false``, ``no``, ``off``) turns the in-run check off: a shape class without a record then runs
the reference."""


def check_enabled() -> bool:
    """Whether the in-run check may run (``MIMIR_FAST_DISPATCH_CHECK``, default on)."""
    return os.environ.get(CHECK_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cuda_present() -> bool:
    """Whether this process can use CUDA (a separate function so that tests can stand in a device)."""
    return torch.cuda.is_available()


def _capturing() -> bool:
    try:
        return torch.cuda.is_current_stream_capturing()
    except Exception:  # no CUDA runtime
        return False


def in_run_timer() -> validate.Timer:
    """The in-run check's timer: a short ``do_bench`` (10 ms warm-up, 40 ms of repetitions)."""
    return validate.do_bench_timer(warmup_ms=10, rep_ms=40)


def check_unrecorded(run_once: Callable[[], None], *, budget_s: float = 30.0, compiled: bool,
                     timer: validate.Timer | None = None, out: Callable[[str], None] = print) -> float:
    """Check, before a run's first step, every kernel call of the run that has no dispatch record.

    Args:
        run_once: one forward and backward of the run's eager (not compiled) model on a real batch, with no
            optimizer step (the gradients it leaves are the caller's to zero). Called once, outside
            torch.compile tracing and CUDA-graph capture.
        budget_s: the check's wall-time budget; a key is started only while time remains, and the keys left
            over stay on the reference for this run, unrecorded (a later run checks them).
        compiled: whether the run compiles its model: a kernel must then beat the compiled reference where a
            record has it timed (the in-run check times the eager one, and its reasons say so).
        timer: how to time (default: ``in_run_timer()``); tests pass a fake one.
        out: where the one line goes.

    Returns:
        The seconds spent (0.0 when the check is off or had nothing to do).

    Prints, when it checked something, one line such as ``kernels: checked 6 shape classes in 12.3 s (budget 30 s):
    4 triton, 1 sdpa_flash, 1 reference`` and, for a kernel that fails, one line naming it; the run goes on
    with the reference for that key, and the failure is recorded, so it is not tried again.
    """
    start = time.perf_counter()
    _dispatch.ensure_loaded(compiled)
    if cuda_present():
        with contextlib.suppress(Exception):  # looked up now, so that a compiled step finds it
            _dispatch.device_identity(torch.device("cuda", torch.cuda.current_device()))
    if _dispatch.kernel_mode() != "auto" or not check_enabled() or not cuda_present():
        return 0.0
    if torch.compiler.is_compiling() or _capturing():
        warnings.warn("mimir_fast: check_unrecorded called while compiling or capturing a CUDA graph: skipped",
                      RuntimeWarning, stacklevel=2)
        return 0.0
    with _dispatch.collecting() as seen:
        run_once()
    todo = {key: where for key, where in seen.items() if key not in _dispatch._DECISIONS}
    if not todo:
        return 0.0
    deadline = start + budget_s
    timer = timer or in_run_timer()
    new, paths, skipped = {}, [], 0
    for key, (shape, device) in todo.items():
        identity, op, shape_class, dtype = key
        if time.perf_counter() >= deadline:
            _dispatch._DECISIONS[key] = (records.REFERENCE, "unchecked: in-run check budget spent")
            skipped += 1
            continue
        result = validate.check_op(op, shape, dtype, device, timer=timer)
        if result.error:
            _dispatch._DECISIONS[key] = (records.REFERENCE, f"unchecked: {result.error}")
            skipped += 1
            continue
        if compiled:
            result.reference_note = "eager reference timed in-run (compiling it would exceed the in-run budget)"
        rec = result.record(identity, source="in-run")
        new[rec["key"]] = rec
        _dispatch.install([rec])
        path, why = _dispatch._DECISIONS[key]
        paths.append(path)
        if not result.kernel.get("validated"):
            out(f"kernels: {op} [{shape_class} {dtype}] rejected ({why}); it is not tried again on this machine, "
                "the reference runs")
    if new:
        try:
            records.save(new)
        except OSError as exc:
            warnings.warn(f"mimir_fast: could not write the dispatch cache {records.cache_path()}: {exc}",
                          RuntimeWarning, stacklevel=2)
    seconds = time.perf_counter() - start
    counts = ", ".join(f"{paths.count(p)} {p}" for p in dict.fromkeys(sorted(paths)))
    left = f", {skipped} left unchecked (reference)" if skipped else ""
    out(f"kernels: checked {len(paths)} shape classes in {seconds:.1f} s (budget {budget_s:g} s): "
        f"{counts or 'none'}{left}")
    return seconds


def kernel_report() -> dict:
    """The path each op took in this process and why: ``{"mode": ..., "ops": {op: [{"shape_class", "dtype",
    "path", "reason"}, ...]}}``. An op with no call seen has one entry with only ``path`` and ``reason``
    (forced mode, no CUDA, or not called)."""
    mode = _dispatch.kernel_mode()
    ops: dict[str, list[dict]] = {}
    for op in OPS:
        entries = []
        if mode != "auto":
            path = records.TRITON if mode == "triton" else records.REFERENCE
            entries.append({"path": path, "reason": f"{_dispatch.ENV_VAR}={mode}"})
        else:
            for (o, shape_class, dtype), (identity, path, why) in _dispatch._SEEN.items():
                if o != op:
                    continue
                # a call seen before the check (collecting, no record yet) reports what the records say now
                path, why = _dispatch._DECISIONS.get((identity, op, shape_class, dtype), (path, why))
                if why == "collecting":
                    path, why = records.REFERENCE, "no record"
                entries.append({"shape_class": shape_class, "dtype": dtype, "path": path, "reason": why})
            if not entries:
                entries.append({"path": None, "reason": "not called"} if cuda_present()
                               else {"path": records.REFERENCE, "reason": "no CUDA"})
        ops[op] = entries
    return {"mode": mode, "ops": ops}


def kernel_report_line(report: dict | None = None) -> str:
    """One line: ``kernels: patch_embed_visible triton (validated, 1.40x) · hsic_gram reference (slower: 0.80x)
    · ...``; an op whose calls took different paths lists them per shape class and dtype."""
    report = report or kernel_report()
    parts = []
    for op, entries in report["ops"].items():
        distinct = list(dict.fromkeys((e["path"], e["reason"]) for e in entries))
        if len(distinct) == 1:
            path, why = distinct[0]
            parts.append(f"{op} {path or 'not called'}" + (f" ({why})" if path else ""))
        else:
            parts += [f"{op}[{e['shape_class']} {e['dtype']}] {e['path']} ({e['reason']})" for e in entries]
    return "kernels: " + " · ".join(parts)
