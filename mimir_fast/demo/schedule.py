"""Running the demo's tasks: in plan order in this process, or side by side in worker processes (one keeps
training while the others evaluate; each run starts once the checkpoints it takes exist)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import DemoConfig
from .plan import PHASES, Task, with_flags


@dataclass
class Runners:
    """The three entry points the demo calls (tests substitute tiny fakes)."""

    pretrain: Callable
    finetune: Callable
    evaluate: Callable


def default_runners() -> Runners:
    from ..evaluate.run import run_eval
    from ..methods import run_finetune, run_pretrain

    return Runners(run_pretrain, run_finetune, run_eval)


def call_task(runners: Runners, kind: str, config, log: str | None = None) -> dict:
    """Run one task; its checkpoint (training) or report (evaluation), with its wall and CPU seconds. ``log``:
    send its output there instead of the console."""
    import contextlib

    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.ExitStack() as stack:
        if log:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(open(log, "w", buffering=1))
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(out))
        result = getattr(runners, kind)(config)
    done = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    if kind == "evaluate":
        return {**done, "report": result}
    return {**done, "checkpoint": str(result.checkpoint)}


def _worker_init(threads: int) -> None:
    import os

    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _worker_task(kind: str, config, log: str) -> dict:
    return call_task(default_runners(), kind, config, log)


def worker_count(cfg: DemoConfig) -> int:
    """Processes that run tasks side by side: ``cfg.workers``, or on a CPU with at least two cores two (each
    single-threaded on two cores; a model this small gains little from a second thread), else one."""
    import os

    if cfg.workers:
        return cfg.workers
    if cfg.device == "cuda":
        return 1
    if cfg.device == "auto":
        import torch

        if torch.cuda.is_available():
            return 1
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def run_tasks(tasks: list[Task], runners: Runners | None, workers: int, executor=None) -> dict[str, dict]:
    """Run ``tasks`` respecting their ``needs``, ``workers`` at a time (in plan order in this process when 1;
    else as ``next_task`` picks); ``executor`` overrides the process pool (tests). Returns each task's result
    by key."""
    if workers == 1 and executor is None:
        results: dict[str, dict] = {}
        for task in tasks:
            results[task.key] = call_task(runners or default_runners(), task.kind, _filled(task, results))
        return results
    return _run_parallel(tasks, runners, workers, executor)


def _filled(task: Task, results: dict[str, dict]):
    return with_flags(task.config, {f: results[key]["checkpoint"] for f, key in task.needs.items()})


TRAINING = ("pretrain", "finetune")


def next_task(ready: list[Task], running: list[Task]) -> Task:
    """The task a free worker starts, from ``ready`` (in priority order): an evaluation when another worker is
    training, else a training run while any is ready, else an evaluation. One worker keeps training while the
    others evaluate each classifier as soon as it exists: AutoAttack is a row's longest run, and started late
    it would run alone at the end while the other cores idle."""
    evals = [t for t in ready if t.phase not in TRAINING]
    trains = [t for t in ready if t.phase in TRAINING]
    if evals and (not trains or any(t.phase in TRAINING for t in running)):
        return evals[0]
    return trains[0]


def _run_parallel(tasks: list[Task], runners: Runners | None, workers: int, executor) -> dict[str, dict]:
    import concurrent.futures as cf
    import multiprocessing
    import os

    if executor is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
        executor = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_worker_init, initargs=(threads,))
    results: dict[str, dict] = {}
    waiting = sorted(tasks, key=lambda t: (PHASES.index(t.phase), t.order))
    running: dict = {}
    start = time.perf_counter()
    with executor:
        while waiting or running:
            ready = [t for t in waiting if all(k in results for k in t.needs.values())]
            while ready and len(running) < workers:
                task = next_task(ready, list(running.values()))
                ready.remove(task)
                waiting.remove(task)
                if runners is None:  # a worker process: its output goes to the run's folder
                    log = str(Path(task.config.output_dir) / "stdout.txt")
                    future = executor.submit(_worker_task, task.kind, _filled(task, results), log)
                else:
                    future = executor.submit(call_task, runners, task.kind, _filled(task, results))
                running[future] = task
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                results[task.key] = future.result()  # a failed run stops the demo with its error
                elapsed = (time.perf_counter() - start) / 60
                print(f"[{elapsed:5.1f} min] {task.key} done in {results[task.key]['wall']:.0f} s "
                      f"({task.config.output_dir})", flush=True)
    return results
