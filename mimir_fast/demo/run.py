"""``run_demo``: plan, run, and write ``results.md``, ``results.json`` and ``results.png``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from .config import DemoConfig, recipe
from .plan import plan_rows, plan_tasks
from .report import environment, plot_results, results_table
from .results import aggregate, row_from_tasks
from .schedule import Runners, run_tasks, worker_count


def run_demo(cfg: DemoConfig, runners: Runners | None = None, executor=None) -> list[dict]:
    """Run every row for every seed; returns the table's rows (aggregated over seeds when there are several).
    ``runners`` and ``executor`` replace the real pipelines and the process pool (tests)."""
    from ..outputs import writable_dir

    plans = plan_rows(cfg)  # every config checked before the first run
    tasks = plan_tasks(plans)
    writable_dir(cfg.output_dir, "--output_dir")
    workers = 1 if runners is not None and executor is None else worker_count(cfg)
    out = Path(cfg.output_dir)
    print(f"demo: {len(plans)} rows, {len(tasks)} runs, {workers} at a time; output in {out}", flush=True)
    start = time.perf_counter()
    results = run_tasks(tasks, runners, workers, executor)
    total = time.perf_counter() - start
    rows = [row_from_tasks(plan, [t for t in tasks if t.row == i], results) for i, plan in enumerate(plans)]
    table_rows = aggregate(rows) if cfg.seeds > 1 else rows
    out.mkdir(parents=True, exist_ok=True)
    text = results_table(table_rows, cfg, total, workers)
    (out / "results.md").write_text(text + "\n")
    chart = plot_results(table_rows, cfg, out / "results.png")
    results_json = {"config": asdict(cfg), "recipe": recipe(), "seeds": list(range(cfg.seeds)), "workers": workers,
                    "total_s": total, "env": environment(),
                    "files": {"table": str(out / "results.md"), "chart": str(chart)}, "rows": table_rows}
    (out / "results.json").write_text(json.dumps(results_json, indent=1) + "\n")
    print("\n" + text)
    return table_rows
