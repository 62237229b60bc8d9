"""The demo's rows from its runs' reports: accuracies and images per attack, merged checks, times, and the mean
and sample standard deviation over seeds."""

from __future__ import annotations

import math
from dataclasses import replace

from .config import SUBSET_ATTACKS
from .plan import PHASES, RowPlan, Task


def row_from_tasks(plan: RowPlan, tasks: list[Task], results: dict[str, dict]) -> dict:
    """A row's results from its tasks: accuracies, checks, and the wall and CPU seconds of each phase."""
    times = {f"{p}_s": 0.0 for p in PHASES[:3]}
    cpu = dict(times)
    reports, pretrained, classifier = {}, [], ""
    sweep = None
    for task in tasks:
        res = results[task.key]
        if task.phase == "sweep":
            sweep = res
            continue
        times[f"{task.phase}_s"] += res["wall"]
        cpu[f"{task.phase}_s"] += res["cpu"]
        if task.kind == "evaluate":
            reports[task.key.rsplit("_", 1)[1]] = res["report"]
        elif task.phase == "pretrain":
            pretrained.append(res["checkpoint"])
        else:
            classifier = res["checkpoint"]
    times["total_s"], cpu["total_s"] = sum(times.values()), sum(cpu.values())
    row = {"start": plan.label, "seed": plan.seed, **row_results(plan, reports), "times": times, "cpu_times": cpu,
           "checkpoints": {"pretrain": pretrained, "classifier": classifier}}
    if plan.purifier:
        row |= _purifier_results(plan, reports)
    if sweep is not None:
        report = sweep["report"]
        row["gamma_sweep"] = {"gammas": report["gammas"], "accuracy": report["accuracy"], "files": report["files"],
                              "seconds": sweep["wall"]}
    return row


def subset_name(n: int) -> str:
    return f"the first {n} validation images (indices 0–{n - 1})"


def row_results(plan: RowPlan, reports: dict) -> dict:
    """Accuracy and images per attack, the AutoAttack subset's accuracies and the merged checks of one row."""
    full, subset = reports["full"], reports.get("aa")
    accuracy = dict(full["accuracy"])
    n = {k: full["n_examples"] for k in accuracy}
    checks = [full["checks"]]
    result: dict = {}
    if subset is not None:
        on_subset = _on_subset(full, subset)
        for key in SUBSET_ATTACKS:
            if key in subset["accuracy"]:
                accuracy[key], n[key] = subset["accuracy"][key], subset["n_examples"]
        randomized = bool(subset.get("defense", {}).get("randomized"))
        checks += [subset["checks"], [_aa_le_pgd(on_subset, plan.evals["aa"], subset["n_examples"], randomized)]]
        result["aa_subset"] = subset_name(subset["n_examples"])
        result["accuracy_aa_subset"] = on_subset
    return {"accuracy": accuracy, "n": n, **result, "checks": merge_checks(checks)}


def _on_subset(full: dict, subset: dict) -> dict:
    """Accuracies on the AutoAttack subset: the subset run's own, plus PGD-20 (and the other full-set attacks)
    taken per example from the full run (PGD's random starts are seeded per example, so they are the same)."""
    from ..evaluate.report import accuracy_of

    where = {idx: i for i, idx in enumerate(full["per_example"]["index"])}
    rows = [where[idx] for idx in subset["per_example"]["index"]]
    draws = full.get("eval_draws", 1)
    out = {k: accuracy_of([full["per_example"][k][i] for i in rows], draws)
           for k in full["accuracy"] if k in full["per_example"]}
    return out | {k: v for k, v in subset["accuracy"].items() if k in SUBSET_ATTACKS}


def _aa_le_pgd(on_subset: dict, aa_cfg, n: int, randomized: bool) -> dict:
    """``autoattack_le_pgd`` on the subset (whose own run has no PGD), by ``evaluate.checks``' rule."""
    from ..evaluate.checks import run_checks

    checks = run_checks(replace(aa_cfg, eps_curve=""), on_subset, {}, n, 0, {}, {}, randomized=randomized)
    return next(c for c in checks if c["name"] == "autoattack_le_pgd")


def merge_checks(groups: list[list[dict]]) -> dict:
    """One status per check name over several evaluations' checks: fail if any run failed it, pass if some
    passed it and none failed, skipped if every run skipped it (details joined)."""
    by_name: dict[str, list[dict]] = {}
    for checks in groups:
        for c in checks:
            by_name.setdefault(c["name"], []).append(c)
    details = []
    for name, found in by_name.items():
        ran = [c for c in found if c["status"] != "skipped"]
        if not ran:
            details.append(dict(found[0]))
            continue
        status = "fail" if any(c["status"] == "fail" for c in ran) else "pass"
        details.append({"name": name, "status": status, "detail": "; ".join(c["detail"] for c in ran)})
    return {"passed": sum(c["status"] == "pass" for c in details),
            "total": sum(c["status"] != "skipped" for c in details),
            "failed": [c["name"] for c in details if c["status"] == "fail"], "details": details}


def _purifier_results(plan: RowPlan, reports: dict) -> dict:
    full = reports["full"]
    extra = {"purifier": plan.purifier, "accuracy_worst": full.get("accuracy_worst", {}),
             "purifier_ms_per_image": full["defense"]["ms_per_image"], "defense": full["defense"]["summary"],
             "settings": {k: v["setting"] for k, v in full["attacks"].items()}}
    if "aa" in reports:
        extra["settings"] |= {k: v["setting"] for k, v in reports["aa"]["attacks"].items() if k in SUBSET_ATTACKS}
    return extra


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per label over seeds: ``accuracy`` and ``mean`` the mean, ``std`` the sample standard deviation
    (n − 1; 0 with one seed), the mean times, the checks summed, and each seed's row under ``runs``."""
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["start"], []).append(r)
    return [_aggregate_row(runs) for runs in by_label.values()]


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def _aggregate_row(runs: list[dict]) -> dict:
    keys = [k for k in runs[0]["accuracy"] if all(k in r["accuracy"] for r in runs)]
    stats = {k: mean_std([r["accuracy"][k] for r in runs]) for k in keys}
    mean, std = {k: m for k, (m, _) in stats.items()}, {k: s for k, (_, s) in stats.items()}
    times = {k: sum(r["times"][k] for r in runs) / len(runs) for k in runs[0]["times"]}
    cpu = {k: sum(r["cpu_times"][k] for r in runs) / len(runs) for k in runs[0]["cpu_times"]}
    failed = [f"{name} (seed {r['seed']})" for r in runs for name in r["checks"]["failed"]]
    checks = {"passed": sum(r["checks"]["passed"] for r in runs), "total": sum(r["checks"]["total"] for r in runs),
              "failed": failed}
    row = {"start": runs[0]["start"], "seeds": [r["seed"] for r in runs], "accuracy": mean, "mean": mean, "std": std,
           "n": runs[0]["n"], "times": times, "cpu_times": cpu, "checks": checks, "runs": runs}
    for key in ("aa_subset", "purifier"):
        if key in runs[0]:
            row[key] = runs[0][key]
    if "purifier_ms_per_image" in runs[0]:
        row["purifier_ms_per_image"] = sum(r["purifier_ms_per_image"] for r in runs) / len(runs)
    return row
