"""Validate and time one op at one shape and dtype: the check behind every dispatch record.

Inputs come from the op's ``make_inputs`` (seeded, the caller's RNG state untouched). The truth is the op's
reference on float64 copies; PyTorch's own low-precision error is that of the reference path ``auto`` would
otherwise run, at the call's dtype. Each candidate (the Triton kernel; for attention also each SDPA backend)
passes when its output and every input gradient are within the tolerance rule (``tolerance.compare`` with
``relative=True``); a candidate that raises fails. Passing candidates and the reference are then timed
forward+backward by a ``Timer``: ``(label, fn) -> median ms``, replaceable (tests pass a fake one).
"""

from __future__ import annotations

import contextlib
import inspect
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import records
from .catalog import OPS
from .tolerance import compare

Timer = Callable[[str, Callable[[], object]], float]
"""(label, zero-argument callable) -> median milliseconds of one call. Labels are ``<op>:<what>``, what being
``reference``, ``compiled_reference`` or a candidate's name (``triton``, ``sdpa_flash``, ...)."""

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def do_bench_timer(warmup_ms: float = 25, rep_ms: float = 100) -> Timer:
    """Triton's ``do_bench`` median on a CUDA device (L2 flushed between calls)."""

    def timer(label: str, fn: Callable[[], object]) -> float:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))

    return timer


def wall_timer(iters: int = 5) -> Timer:
    """Median wall-clock time of ``iters`` calls after one warm-up (CPU; coarse)."""

    def timer(label: str, fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    return timer


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


@dataclass
class CheckResult:
    """What one check found."""

    op: str
    dtype: str
    """``float32``, ``float16`` or ``bfloat16``."""
    shape: dict
    """The sizes checked (the op's ``make_inputs`` vocabulary)."""
    shape_class: str
    candidates: dict[str, dict] = field(default_factory=dict)
    """Name -> ``validated``, ``max_error`` and ``tolerance`` (of the tensor nearest its bound), ``worst`` (that
    tensor's name), ``ms`` (forward+backward median, None when not timed), ``error`` (what it raised)."""
    reference_ms: float | None = None
    """Forward+backward median of the eager reference path."""
    compiled_reference_ms: float | None = None
    """The same under ``torch.compile``, when asked for and it compiled."""
    reference_note: str = ""
    """How the reference was timed (e.g. why the compiled one was not)."""
    error: str | None = None
    """Why the check itself could not run (the reference raised, out of memory): the key stays unchecked."""
    seconds: float = 0.0
    """Wall time of the check."""

    @property
    def kernel(self) -> dict:
        return self.candidates.get(records.TRITON, {})

    def record(self, identity: str, source: str) -> dict:
        """The dispatch record of this check on the device ``identity`` (see ``records``)."""
        return {
            "key": records.record_key(identity, self.op, self.shape_class, self.dtype),
            "identity": identity, "op": self.op, "shape_class": self.shape_class, "dtype": self.dtype,
            "shape": self.shape, **records.versions(), "kernel_sources": records.fingerprint(self.op),
            "candidates": self.candidates, "reference_ms": self.reference_ms,
            "compiled_reference_ms": self.compiled_reference_ms, "reference_note": self.reference_note,
            "source": source, "checked_utc": records.now_utc(),
        }


def _grads(fn: Callable, inputs: tuple, wrt_idx: tuple[int, ...], grad_out: torch.Tensor) -> list[torch.Tensor]:
    """[output, d input for each of ``wrt_idx``] of one call; an unused input's gradient is zeros."""
    out = fn(*inputs)
    wrt = [inputs[i] for i in wrt_idx]
    grads = torch.autograd.grad(out, wrt, grad_out.to(out.dtype), allow_unused=True)
    return [out.detach()] + [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]


def _fwdbwd(fn: Callable, inputs: tuple, wrt_idx: tuple[int, ...], grad_out: torch.Tensor) -> Callable[[], object]:
    wrt = [inputs[i] for i in wrt_idx]

    def run():
        out = fn(*inputs)
        return torch.autograd.grad(out, wrt, grad_out.to(out.dtype), allow_unused=True)

    return run


def check_op(op: str, shape: dict, dtype: torch.dtype | str, device: torch.device, *, timer: Timer | None,
             compiled_reference: bool = False, seed: int = 0) -> CheckResult:
    """Validate every candidate of ``op`` at ``shape`` and ``dtype`` on ``device`` and, with a ``timer``, time
    the validated ones and the reference (forward+backward). Never raises for a failing kernel: what failed is
    in the result.

    Args:
        op: a name in ``catalog.OPS``.
        shape: sizes in the op's ``make_inputs`` vocabulary.
        dtype: the precision checked (a torch dtype or its name).
        device: where to run (CPU tensors run the kernels only under ``TRITON_INTERPRET=1``).
        timer: how to time; None validates only.
        compiled_reference: also time ``torch.compile`` of the reference path.
        seed: the inputs' seed.
    """
    entry = OPS[op]
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    result = CheckResult(op, str(dtype).removeprefix("torch."), dict(shape), entry.shape_class(shape))
    start = time.perf_counter()
    fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    with fork, torch.autocast(device.type, enabled=False), torch.enable_grad():
        torch.manual_seed(seed)
        try:
            _validate_and_time(entry, result, device, dtype, timer, compiled_reference)
        except torch.cuda.OutOfMemoryError as exc:
            result.error = f"out of memory: {one_line(exc)}"
        except Exception as exc:  # the check itself (inputs, reference, timer) failed: nothing learnt about the kernel
            result.error = f"the check raised {one_line(exc)}"
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result.seconds = time.perf_counter() - start
    return result


def _validate_and_time(entry, result: CheckResult, device: torch.device, dtype: torch.dtype, timer: Timer | None,
                       compiled_reference: bool) -> None:
    inputs = entry.make_inputs(result.shape, device, dtype, True)
    idx = entry.grad_argnums
    names = list(inspect.signature(entry.fn).parameters)
    labels = ["out"] + [f"d{names[i]}" for i in idx]
    inputs64 = tuple(t.detach().double().requires_grad_(i in idx)
                     if isinstance(t, torch.Tensor) and t.is_floating_point() else t for i, t in enumerate(inputs))
    try:
        with torch.no_grad():
            out_shape = entry.reference(*inputs).shape
        grad_out = torch.randn(out_shape, device=device).to(dtype)  # in the call's precision: exact in any wider one
        lowp = _grads(entry.reference, inputs, idx, grad_out)
        truth = _grads(entry.truth, inputs64, idx, grad_out.double())
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # the reference itself cannot run this: nothing to hold a kernel to
        result.error = f"reference raised {one_line(exc)}"
        return
    for name, fn in entry.candidates().items():
        cand = result.candidates[name] = {"validated": False, "max_error": None, "tolerance": None, "worst": None,
                                          "ms": None, "error": None}
        try:
            got = _grads(fn, inputs, idx, grad_out)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # a kernel that raises is a failed candidate, never a crash
            cand["error"] = one_line(exc)
            continue
        comps = [compare(label, t, g, lp, g.dtype, relative=True) for label, t, g, lp in zip(labels, truth, got, lowp)]
        worst = max(comps, key=lambda c: c.error / c.bound if c.bound > 0 else (0.0 if c.error == 0 else float("inf")))
        cand.update(validated=all(c.ok for c in comps), max_error=worst.error, tolerance=worst.bound, worst=worst.name)
    if timer is None:
        return
    result.reference_ms = timer(f"{entry.name}:reference", _fwdbwd(entry.reference, inputs, idx, grad_out))
    for name, fn in entry.candidates().items():
        if result.candidates[name]["validated"]:
            try:
                result.candidates[name]["ms"] = timer(f"{entry.name}:{name}", _fwdbwd(fn, inputs, idx, grad_out))
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:
                result.candidates[name].update(validated=False, error=f"while timing: {one_line(exc)}")
    if compiled_reference:
        _time_compiled(entry, result, inputs, idx, grad_out, timer)


def _time_compiled(entry, result: CheckResult, inputs: tuple, idx: tuple[int, ...], grad_out: torch.Tensor,
                   timer: Timer) -> None:
    start = time.perf_counter()
    try:
        # a Python frame for dynamo to trace, also when the reference is a builtin (attention's SDPA)
        compiled = torch.compile(lambda *args: entry.reference(*args), dynamic=False)
        run = _fwdbwd(compiled, inputs, idx, grad_out)
        run()  # compilation, outside the timing
        compile_s = time.perf_counter() - start
        result.compiled_reference_ms = timer(f"{entry.name}:compiled_reference", run)
        result.reference_note = f"eager and torch.compile'd reference timed (compile {compile_s:.1f} s)"
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:
        result.reference_note = f"compiled reference not timed: {one_line(exc)}"
    with contextlib.suppress(Exception):
        torch._dynamo.reset()  # one op's graphs do not count towards the next one's recompile limit
