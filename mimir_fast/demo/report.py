"""The demo's outputs: the Markdown table with its notes (``results.md``) and the bar chart (``results.png``)."""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path

from .config import NAMES, SUBSET_ATTACKS, VAL_IMAGES, DemoConfig
from .results import subset_name


def environment() -> dict:
    import os

    import torch

    from ..device import device_name

    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "processor": device_name(torch.device("cpu")), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": device_name(torch.device("cuda")) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d")}


def _cell(row: dict, key: str) -> str:
    acc = row["accuracy"]
    if key == "aa" and "aa" not in acc and "aa-rand" in acc:
        key, suffix = "aa-rand", " (rand)"
    else:
        suffix = ""
    if key not in acc:
        return "–"
    if "std" in row:
        return f"{acc[key]:.1f} ± {row['std'].get(key, 0.0):.1f}{suffix}"
    return f"{acc[key]:.1f}{suffix}"


def results_table(rows: list[dict], cfg: DemoConfig, total_s: float | None = None, workers: int = 1) -> str:
    """The Markdown table of ``rows`` (one per seed run, or aggregated over seeds) and its notes."""
    keys = [k for k in cfg.attack_list if k in NAMES]
    purifiers = any("purifier" in r for r in rows)
    head = ["start"] + [f"{NAMES[k]} (%)" for k in keys]
    if purifiers:
        head += ["PGD-20 gray-box (%)"]
    head += ["pretrain (s)", "fine-tune (s)", "eval (s)", "total (s)"]
    if purifiers:
        head += ["purifier (ms/img)"]
    head += ["checks"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["start"]] + [_cell(r, k) for k in keys]
        if purifiers:
            cells.append(_cell(r, "pgd20-gb"))
        t = r["times"]
        cells += [f"{t['pretrain_s']:.0f}", f"{t['finetune_s']:.0f}", f"{t['eval_s']:.0f}", f"{t['total_s']:.0f}"]
        if purifiers:
            cells.append(f"{r['purifier_ms_per_image']:.2f}" if "purifier_ms_per_image" in r else "–")
        checks = f"{r['checks']['passed']}/{r['checks']['total']} pass"
        if r["checks"]["failed"]:
            checks += f" (failed: {', '.join(r['checks']['failed'])})"
        lines.append("| " + " | ".join(cells + [checks]) + " |")
    lines += _notes(rows, cfg, keys, total_s, workers)
    return "\n".join(lines)


def _notes(rows: list[dict], cfg: DemoConfig, keys: list[str], total_s: float | None, workers: int) -> list[str]:
    on_full = [NAMES[k] for k in keys if k not in SUBSET_ATTACKS]
    note = f"\nDigits validation set: {', '.join(on_full)} on {_images(cfg.n_images)}"
    if any(k in SUBSET_ATTACKS for k in keys):
        note += f"; AutoAttack on {subset_name(cfg.aa_n_ex)}"
    note += "; L∞ ε = 8/255; fp32 evaluation."
    seeds = (f"Mean ± sample standard deviation over seeds 0–{cfg.seeds - 1}; times are means per seed"
             if cfg.seeds > 1 else "Seed 0; times")
    timing = f"{seeds} (wall seconds of each run"
    timing += f"; {workers} runs at a time, so rows overlap)" if workers > 1 else ")"
    if total_s is not None:
        timing += f"; the whole demo took {total_s:.0f} s ({total_s / 60:.1f} min)"
    lines = [note, timing + "."]
    if any("purifier" in r for r in rows):
        lines.append("Purifier rows: full-gradient attacks through purifier and classifier (De^3: EOT-20 per step, "
                     "AutoAttack rand, accuracy the mean of 10 seeded noise draws per example); gray-box = PGD-20 on "
                     "the classifier alone, then purified (non-adaptive, so weaker). Purifier cost: forward only, "
                     "batch 250, on the evaluation device.")
        sweep = next((run["gamma_sweep"] for r in rows for run in r.get("runs", [r]) if "gamma_sweep" in run), None)
        if sweep:
            cells = "; ".join(f"γ {g:g}: clean {c:.1f}, PGD-20 {p:.1f}, gray-box {b:.1f}" for g, c, p, b in zip(
                sweep["gammas"], sweep["accuracy"]["clean"], sweep["accuracy"]["pgd20"],
                sweep["accuracy"]["pgd20-gb"]))
            lines.append(f"De^3 γ sweep (seed 0, {sweep['seconds']:.0f} s): {cells}.")
    return lines


def _images(n: int) -> str:
    return f"all {n} images" if n == VAL_IMAGES else f"the first {n} images"


def plot_results(rows: list[dict], cfg: DemoConfig, path: Path) -> Path:
    """A bar chart of clean, PGD-20 and AutoAttack accuracy per row, with ± one standard deviation over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("clean", "pgd20", "aa") if k in cfg.attack_list]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    width = 0.8 / max(len(keys), 1)
    for j, key in enumerate(keys):
        values, errors = [], []
        for r in rows:
            k = "aa-rand" if key == "aa" and "aa" not in r["accuracy"] else key
            values.append(r["accuracy"].get(k, math.nan))
            errors.append(r.get("std", {}).get(k, 0.0))
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(rows))]
        bars = ax.bar(xs, values, width, yerr=errors if cfg.seeds > 1 else None, capsize=3, label=NAMES[key])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, label_type="center", color="white")
    ax.set_xticks(range(len(rows)), [r["start"].replace(" pretraining", "\npretraining").replace(
        "training from scratch", "training\nfrom scratch") for r in rows], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)
    seeds = f"mean ± std over {cfg.seeds} seeds" if cfg.seeds > 1 else "seed 0"
    ax.set_title(f"Digits, L∞ ε = 8/255; clean, PGD-20 on {cfg.n_images} images, AutoAttack on {cfg.aa_n_ex}; "
                 f"{seeds}", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", ncol=len(keys))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
