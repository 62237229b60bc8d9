"""The doctor's stages that need a repository checkout: the GPU-marked tests and the step and loader suites, each
a child process with a timeout (``procs.run``); their records are read back from the files the suites write."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from . import procs
from .targets import TARGET_CONFIG, VIT_L_CONFIG


def _env() -> dict[str, str]:
    """The children's environment: ``MIMIR_FAST_KERNELS`` dropped, so that they measure what ``auto`` does."""
    return {k: v for k, v in os.environ.items() if k != "MIMIR_FAST_KERNELS"}


def gpu_tests(root: Path, *, timeout_s: float, workdir: Path) -> dict:
    """``pytest -m gpu tests``: the stage record, with pytest's summary line as ``detail``."""
    proc = procs.run(["-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider"], timeout_s=timeout_s,
                     log=workdir / "gpu_tests.log", cwd=root, env=_env())
    summary = next((ln for ln in reversed(proc.tail(30).splitlines())
                    if re.search(r"\d+ (passed|failed|error|skipped|deselected)", ln)), "")
    if proc.timed_out:
        status, detail = "timeout", f"killed after {timeout_s:.0f} s" + (f"; last: {summary}" if summary else "")
    else:
        status = "ok" if proc.returncode == 0 else "failed"
        detail = summary.strip("= ") or f"exit status {proc.returncode}: {proc.tail(2)}"
    return {"status": status, "detail": detail, "log": str(proc.log)}


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_suites(root: Path, *, compile_mode: str, timeout_s: float, workdir: Path) -> tuple[dict, list[dict]]:
    """The ViT-B/16 points every target but memory needs, in one ``bench.step`` process (so that they share its
    warm caches), in the order the targets need them: the compiled PGD-1 step (MFU), eager (compiled vs eager),
    reference-style, mask ratio 0, PGD-10. Points finished before a timeout are kept."""
    out = workdir / "step_vit_b"
    records = out / "points.jsonl"
    proc = procs.run(["-m", "bench.step", "--suite", "step", "compile", "baseline", "masking", "pgd",
                      "--configs", TARGET_CONFIG, "--methods", "mimir", "--pgd_steps", "1", "10",
                      "--compile", compile_mode, "--iters", "10", "--out", str(out), "--records_jsonl", str(records)],
                     timeout_s=timeout_s, log=workdir / "step_vit_b.log", cwd=root, env=_env())
    return _stage(proc, _jsonl(records), 5), _jsonl(records)


def vit_l_memory(root: Path, *, compile_mode: str, timeout_s: float, workdir: Path) -> tuple[dict, list[dict]]:
    """One ViT-L/16 B=128 MIMIR PGD-1 step: its peak memory."""
    out = workdir / "step_vit_l"
    records = out / "points.jsonl"
    proc = procs.run(["-m", "bench.step", "--suite", "step", "--configs", VIT_L_CONFIG, "--methods", "mimir",
                      "--compile", compile_mode, "--iters", "3", "--warmup", "0", "--out", str(out),
                      "--records_jsonl", str(records)], timeout_s=timeout_s, log=workdir / "step_vit_l.log", cwd=root,
                     env=_env())
    return _stage(proc, _jsonl(records), 1), _jsonl(records)


def loader(root: Path, *, step_img_per_sec: float | None, timeout_s: float, workdir: Path) -> tuple[dict, list[dict]]:
    """The DALI loader on generated ImageNet-sized JPEGs at the step's batch, against the step's rate."""
    out = workdir / "loader"
    args = ["-m", "bench.loader", "--backends", "dali", "--generate", "1536", "--input_size", "224",
            "--batch_size", "256", "--batches", "4", "--warmup", "1", "--num_workers", "8", "--out", str(out)]
    if step_img_per_sec:
        args += ["--step_img_per_sec", f"{step_img_per_sec:.3f}"]
    proc = procs.run(args, timeout_s=timeout_s, log=workdir / "loader.log", cwd=root, env=_env())
    results = []
    for path in sorted(out.glob("loader_*.json")):
        results += json.loads(path.read_text())["results"]
    return _stage(proc, results, 1), results


def _stage(proc: procs.ProcResult, results: list[dict], expected: int) -> dict:
    failed = [r for r in results if "error" in r]
    if proc.timed_out:
        status = "timeout"
    elif proc.returncode != 0 or failed:
        status = "failed"
    else:
        status = "ok"
    detail = f"{len(results) - len(failed)} of {expected} measurements"
    if failed:
        detail += "; failed: " + "; ".join(r["error"] for r in failed)[:300]
    if proc.returncode not in (0, None):
        detail += f"; exit status {proc.returncode}: {proc.tail(2)}"
    return {"status": status, "detail": detail, "log": str(proc.log)}
