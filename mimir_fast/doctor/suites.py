"""The doctor's stages that need a repository checkout: the GPU-marked tests and the step and loader suites, each
a child process with a timeout (``procs.run``); their records are read back from the files the suites write."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from . import procs
from .targets import TARGET_CONFIG, VIT_L_CONFIG


def child_env(private_cache: Path | None = None) -> dict[str, str]:
    """The children's environment: ``MIMIR_FAST_KERNELS`` dropped, so that they measure what ``auto`` does; with
    ``private_cache`` (``--no-write_records``) their dispatch records go there instead of the user's cache."""
    env = {k: v for k, v in os.environ.items() if k != "MIMIR_FAST_KERNELS"}
    if private_cache is not None:
        env["MIMIR_FAST_DISPATCH_CACHE"] = str(private_cache)
    return env


def gpu_tests(root: Path, *, timeout_s: float, workdir: Path, env: dict[str, str]) -> dict:
    """``pytest -m gpu tests``: the stage record, with pytest's summary line as ``detail``."""
    proc = procs.run(["-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider"], timeout_s=timeout_s,
                     log=workdir / "gpu_tests.log", cwd=root, env=env)
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


def _bench_step(name: str, args: list[str], expected: int, *, root: Path, timeout_s: float, workdir: Path,
                env: dict[str, str]) -> tuple[dict, list[dict]]:
    """One ``bench.step`` process; the points it finished before a timeout are kept."""
    out = workdir / name
    records = out / "points.jsonl"
    proc = procs.run(["-m", "bench.step", *args, "--methods", "mimir", "--out", str(out), "--records_jsonl",
                      str(records)], timeout_s=timeout_s, log=workdir / f"{name}.log", cwd=root, env=env)
    return _stage(proc, _jsonl(records), expected), _jsonl(records)


def step(root: Path, *, compile_mode: str, timeout_s: float, workdir: Path,
         env: dict[str, str]) -> tuple[dict, list[dict]]:
    """ViT-B/16 B=256 bf16 PGD-1 in one process (they share its warm caches), in the order the targets need them:
    the compiled step (MFU), the eager step (compiled vs eager), the reference-style step."""
    return _bench_step("step", ["--suite", "step", "compile", "baseline", "--configs", TARGET_CONFIG,
                                "--compile", compile_mode, "--iters", "10"], 3,
                       root=root, timeout_s=timeout_s, workdir=workdir, env=env)


def scaling(root: Path, *, timeout_s: float, workdir: Path, env: dict[str, str]) -> tuple[dict, list[dict]]:
    """The masking speedup (mask ratio 0 against 0.75) and PGD-K scaling (PGD-10 against PGD-1) of the same
    configuration, eager: each compiled point would cost a compilation the budget does not have."""
    return _bench_step("scaling", ["--suite", "masking", "pgd", "--configs", TARGET_CONFIG, "--pgd_steps", "1", "10",
                                   "--compile", "off", "--iters", "5"], 3,
                       root=root, timeout_s=timeout_s, workdir=workdir, env=env)


def vit_l_memory(root: Path, *, timeout_s: float, workdir: Path, env: dict[str, str]) -> tuple[dict, list[dict]]:
    """One ViT-L/16 B=128 MIMIR PGD-1 step, eager (no compilation in the budget): its peak memory."""
    return _bench_step("vit_l_memory", ["--suite", "step", "--configs", VIT_L_CONFIG, "--compile", "off",
                                        "--iters", "3", "--warmup", "0"], 1,
                       root=root, timeout_s=timeout_s, workdir=workdir, env=env)


def loader(root: Path, *, step_img_per_sec: float | None, timeout_s: float, workdir: Path,
           env: dict[str, str]) -> tuple[dict, list[dict]]:
    """The DALI loader on generated ImageNet-sized JPEGs at the step's batch, against the step's rate."""
    out = workdir / "loader"
    args = ["-m", "bench.loader", "--backends", "dali", "--generate", "1536", "--input_size", "224",
            "--batch_size", "256", "--batches", "4", "--warmup", "1", "--num_workers", "8", "--out", str(out)]
    if step_img_per_sec:
        args += ["--step_img_per_sec", f"{step_img_per_sec:.3f}"]
    proc = procs.run(args, timeout_s=timeout_s, log=workdir / "loader.log", cwd=root, env=env)
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
