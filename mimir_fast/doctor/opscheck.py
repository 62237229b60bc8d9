"""The doctor's op stage: validate (and on CUDA time) every op at each shape and dtype, in a child process.

The checks run in a child (``python -m mimir_fast.doctor.opscheck PLAN OUT``) so that a kernel that hangs or
crashes the CUDA context costs one check, not the doctor: the child writes one JSON line before and after each
check, the parent reads them, records a check whose process died as a failed kernel (in the dispatch cache too,
so ``auto`` never runs it) and starts a new child for the rest. On the CPU the child turns Triton's interpreter
on before any kernel is imported.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import procs

CHILD_MARGIN_S = 30.0
"""A compiled reference is timed only while this much of the stage's time is left."""


def plan(ops: list[str], shapes: list[str], dtypes: list[str], cuda: bool) -> list[dict]:
    """The checks, most important first: each dtype in turn, each op's shapes in their listed order (the target
    configuration's first), ops interleaved so that every op gets its first shape early. The CPU checks ``tiny``."""
    from ..ops.catalog import OPS

    per_op = {}
    for op in ops:
        named = OPS[op].shapes
        names = ([s for s in shapes if s in named] if shapes else [s for s in named if s != "tiny"]) if cuda \
            else ["tiny"]
        per_op[op] = names
    items = []
    for dtype in dtypes:
        for rank in range(max((len(v) for v in per_op.values()), default=0)):
            for op, names in per_op.items():
                if rank < len(names):
                    items.append({"op": op, "shape_name": names[rank], "shape": OPS[op].shapes[names[rank]],
                                  "dtype": dtype})
    return items


def _emit(out, event: dict) -> None:
    out.write(json.dumps(event) + "\n")
    out.flush()


def child(plan_path: str, out_path: str) -> None:
    """The child's loop (see the module docstring)."""
    doc = json.loads(Path(plan_path).read_text())
    cuda = doc["device"] == "cuda"
    if not cuda:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported (they are imported lazily)
    import torch

    from ..ops import _dispatch, records
    from ..ops.validate import CheckResult, check_op, do_bench_timer

    device = torch.device(doc["device"])
    identity = _dispatch.device_identity(device) if cuda else None
    timer = do_bench_timer() if cuda else None
    with open(out_path, "a") as out:
        for i, item in zip(doc["indices"], doc["items"]):
            if time.time() >= doc["deadline"]:
                break
            _emit(out, {"event": "start", "i": i})
            compiled = doc["compiled_reference"] and doc["deadline"] - time.time() > CHILD_MARGIN_S
            result: CheckResult = check_op(item["op"], item["shape"], item["dtype"], device, timer=timer,
                                           compiled_reference=cuda and compiled)
            if cuda and not doc["compiled_reference"]:
                result.reference_note = "compiled reference not asked for"
            elif cuda and not compiled:
                result.reference_note = result.reference_note or "compiled reference not timed (doctor budget)"
            record = result.record(identity, source="doctor") if cuda and not result.error else None
            if record and doc["write_records"]:
                records.save({record["key"]: record})
            _emit(out, {"event": "done", "i": i, "result": asdict(result), "record": record})


def run_stage(items: list[dict], *, device: str, deadline: float, compiled_reference: bool, write_records: bool,
              workdir: Path) -> tuple[list[dict | None], list[str]]:
    """Run ``items`` in children until done or ``deadline`` (``time.time()``): per item its ``done`` event (None
    when not reached), and one note per child that died."""
    workdir.mkdir(parents=True, exist_ok=True)
    done: dict[int, dict] = {}
    notes: list[str] = []
    pending = list(range(len(items)))
    attempt = 0
    while pending and time.time() < deadline - 5:
        attempt += 1
        plan_path, out_path = workdir / f"ops_plan_{attempt}.json", workdir / f"ops_{attempt}.jsonl"
        plan_path.write_text(json.dumps({"device": device, "deadline": deadline, "indices": pending,
                                         "items": [items[i] for i in pending], "compiled_reference": compiled_reference,
                                         "write_records": write_records}))
        proc = procs.run(["-m", "mimir_fast.doctor.opscheck", str(plan_path), str(out_path)],
                         timeout_s=deadline - time.time() + 10, log=workdir / f"ops_{attempt}.log")
        started = []
        for line in out_path.read_text().splitlines() if out_path.exists() else []:
            try:
                event = json.loads(line)
            except ValueError:  # a line cut short when the child died
                continue
            if event["event"] == "start":
                started.append(event["i"])
            else:
                done[event["i"]] = event
        lost = [i for i in started if i not in done]
        if proc.returncode not in (0, None) or (proc.timed_out and lost):
            why = "timed out at the doctor's budget" if proc.timed_out else f"exit status {proc.returncode}"
            notes.append(f"op-check process {attempt} {why}: {proc.tail(3)}")
        for i in lost:  # the check the child died in
            done[i] = _lost(items[i], device, proc, write_records)
        if proc.returncode == 0 or proc.timed_out:
            break  # finished, or out of time: what is left was not reached
        pending = [i for i in pending if i not in done]
    return [done.get(i) for i in range(len(items))], notes


def _lost(item: dict, device: str, proc: procs.ProcResult, write_records: bool) -> dict:
    """The ``done`` event of a check whose process died: the kernel failed (unless it only ran out of time)."""
    from ..ops.catalog import OPS
    from ..ops.validate import CheckResult

    result = CheckResult(item["op"], item["dtype"], item["shape"], OPS[item["op"]].shape_class(item["shape"]))
    if proc.timed_out:
        result.error = "not finished within the doctor's budget"
        return {"event": "done", "result": asdict(result), "record": None}
    tail = " | ".join(proc.tail(2).splitlines())
    result.candidates = {"triton": {"validated": False, "max_error": None, "tolerance": None, "worst": None,
                                    "ms": None, "error": f"the check's process died (exit {proc.returncode}): {tail}"}}
    record = None
    if device == "cuda":
        import torch

        from ..ops import _dispatch, records

        record = result.record(_dispatch.device_identity(torch.device("cuda")), source="doctor")
        if write_records:
            records.save({record["key"]: record})
    return {"event": "done", "result": asdict(result), "record": record}


def op_record(item: dict, event: dict | None, *, cuda: bool, compiled_run: bool) -> dict:
    """The doctor JSON's record of one check: ``op, dtype, shape, validated, max_error, tolerance, kernel_ms,
    reference_ms, speedup, path, reason`` (the path ``auto`` takes in a run that compiles or not, as the doctor's
    runs do), and details."""
    from ..ops.records import REFERENCE, decide

    base = {"op": item["op"], "dtype": item["dtype"], "shape": item["shape"], "shape_name": item["shape_name"]}
    if event is None:
        return {**base, "validated": False, "max_error": None, "tolerance": None, "kernel_ms": None,
                "reference_ms": None, "speedup": None, "path": REFERENCE,
                "reason": "not checked (doctor budget spent)"}
    r = event["result"]
    kernel = r["candidates"].get("triton", {})
    speedup = (r["reference_ms"] / kernel["ms"]) if kernel.get("ms") and r["reference_ms"] else None
    if r["error"]:
        path, reason = REFERENCE, f"unchecked: {r['error']}"
    elif not cuda:
        path, reason = REFERENCE, "no CUDA: auto runs the reference" + (
            "" if kernel.get("validated") else f"; kernel {decide(r, False)[1]}")
    else:
        path, reason = decide(r, compiled_run)
    rec = {**base, "shape_class": r["shape_class"], "validated": bool(kernel.get("validated")),
           "max_error": kernel.get("max_error"), "tolerance": kernel.get("tolerance"), "kernel_ms": kernel.get("ms"),
           "reference_ms": r["reference_ms"], "speedup": speedup, "path": path, "reason": reason,
           "compiled_reference_ms": r["compiled_reference_ms"], "reference_note": r["reference_note"],
           "error": kernel.get("error") or r["error"], "check_s": r["seconds"],
           "kernel_failed": bool(kernel) and not kernel.get("validated") and not r["error"]}
    if r["compiled_reference_ms"] and kernel.get("ms"):
        rec["speedup_vs_compiled"] = r["compiled_reference_ms"] / kernel["ms"]
    if cuda and not r["error"]:
        rec["path_eager"], rec["reason_eager"] = decide(r, False)
    others = {name: c for name, c in r["candidates"].items() if name != "triton"}
    if others:
        rec["backends"] = {name: c["ms"] if c.get("validated") else (c.get("error") or "mismatch")
                           for name, c in others.items()}
    return rec


if __name__ == "__main__":
    child(*sys.argv[1:3])
